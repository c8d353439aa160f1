"""stn-gluon's internals, under the scripts at the repository root.

The root holds what a user runs (train.py, predict.py, visualize.py, reproduce.py,
export_onnx.py) and the model (stn.py: the spatial transformer; net.py: the networks);
this package holds what they share: the run settings (config), the data (mnist, distort,
geometry), the training loop (engine, symbolic), the run folder (rundir, atomic) and how
MXNet runs here (runtime, sampler, compat). Scripts never import each other.
"""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository
