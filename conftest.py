# Lets the tests import the top-level modules (stn, net, mnist, train, visualize).
