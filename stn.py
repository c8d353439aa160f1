"""The spatial transformer (Jaderberg et al., NIPS 2015, section 3) as a Gluon HybridBlock,
with the paper's four transformation families.

    U (N, C, H, W) --localisation + regressor--> theta (N, T)
      --grid generator (family)--> grid (N, 2, H', W')
      --bilinear sampler(U, grid)--> V (N, C, H', W')   (``sample``)

Coordinate convention (MXNet's, shared by every family): the grid maps each *output*
pixel to the *input* point it reads, both in normalised coordinates where -1 and +1 are
the centres of the corner pixels (x = -1 + 2j/(W-1) for pixel column j, y likewise with
rows). The grid holds x (width) first, then y: grid[n, 0] = x_s, grid[n, 1] = y_s.
Samples that fall outside U read zeros (paper eq. 5 with zero padding).

The families and their theta (T = the regressor's output size), each starting at the
identity (``identity_theta``):

    affine      T = 6   [a, b, tx, c, d, ty], the row-major 2x3 matrix of paper eq. 1:
                        (x_s, y_s) = [[a, b, tx], [c, d, ty]] (x_t, y_t, 1)
    attention   T = 3   [s, tx, ty]: isotropic scale and translation (paper eq. 2),
                        the affine [s, 0, tx, 0, s, ty]
    projective  T = 8   [h11, h12, h13, h21, h22, h23, h31, h32]: the 3x3 homography H
                        with h33 = 1; (u, v, w) = H (x_t, y_t, 1), x_s = u / w, y_s = v / w
                        with w kept at |w| >= PROJECTIVE_EPS, sign kept (``guard``)
    tps         T = 2K  [x_1 .. x_K, y_1 .. y_K]: where the K control points (a regular
                        ``tps_grid`` over [-1, 1]^2, row by row from the top left, see
                        ``control_points``) read the input: all x first, then all y. The
                        thin-plate spline through them maps every output point (paper
                        section 3.2 and its appendix); identity = the control points

Each family is one entry of ``FAMILIES``: its identity theta, the constant its grid
generator needs and that generator; the block, ``sampling_grid`` and the tests all go
through it, so a new family is one entry here. affine and attention use MXNet's
``GridGenerator``; projective and tps build the grid from a constant the block holds as
a parameter with ``grad_req='null'`` (the normalised target grid, or the precomputed TPS
basis), so they hybridize and export like the rest. In a hybridized or exported graph
the grid is PREFIX_gridgenerator0_output (affine, attention) or PREFIX_grid_output
(projective, tps), the sampler's output PREFIX_bilinearsampler0_output and theta
PREFIX_regressor_fwd_output (``rundir.py`` looks them up by these names).
"""
from collections import namedtuple

from stngluon import compat  # noqa: F401  (before mxnet)
import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from stngluon import sampler
from stngluon.geometry import control_points, target_points, tps_basis, tps_shape

PROJECTIVE_EPS = 1e-3   # smallest |w| the projective grid divides by


# ---- grid generators (F is mx.nd or mx.sym) ----------------------------------------------

def affine_grid(F, theta, target_shape, name=None):
    """Paper eq. 1: theta (N, 6) -> grid (N, 2, H', W') through MXNet's GridGenerator
    (named ``name`` in a graph; by default PREFIX_gridgenerator0)."""
    return F.GridGenerator(theta, transform_type='affine', target_shape=tuple(target_shape),
                           name=name)


def affine_sample(F, data, theta, target_shape):
    """Warp ``data`` (N, C, H, W) by ``theta`` (N, 6) onto a ``target_shape`` (H', W') grid.

    Paper eqs. 1 (grid generator) and 5 (bilinear sampler); returns (N, C, H', W').
    """
    return F.BilinearSampler(data, affine_grid(F, theta, target_shape))


def sample(F, data, grid, name='bilinearsampler0', input_grad=True):
    """Paper eq. 5 with the bilinear kernel (eqs. 6-7), zero padding: ``data`` (N, C, H, W)
    read at ``grid`` (N, 2, H', W') -> (N, C, H', W'). MXNet's ``BilinearSampler``, or the
    same computation with the batch across threads (sampler.py); in a graph the node is
    PREFIX_``name`` either way. ``input_grad=False`` where ``data`` needs no gradient (the
    network's images): the threaded sampler then leaves it at zero, saving time."""
    if sampler.use_threaded():
        return getattr(F, sampler.OP if input_grad else sampler.OP_GRID_ONLY)(data, grid, name=name)
    return F.BilinearSampler(data, grid, name=name)


def attention_theta(F, theta):
    """Paper eq. 2: attention theta (N, 3) = [s, tx, ty] -> affine theta (N, 6)
    [s, 0, tx, 0, s, ty]."""
    s, tx, ty = F.split(theta, num_outputs=3, axis=1)
    zero = F.zeros_like(s)
    return F.concat(s, zero, tx, zero, s, ty, dim=1)


def guard(F, w, eps=PROJECTIVE_EPS):
    """w with |w| raised to at least ``eps``, keeping its sign (w = 0 counts as positive).

    Where w is raised, no gradient reaches it: points at (or beyond) the horizon of the
    homography read from far outside the input, i.e. zeros."""
    return F.where(w >= 0, F.maximum(w, eps), F.minimum(w, -eps))


def projective_grid(F, theta, target, target_shape, name='grid', eps=PROJECTIVE_EPS):
    """Projective grid generator: theta (N, 8), ``target`` (3, H', W') from ``grid_constant``
    -> grid (N, 2, H', W'): (u, v, w) = H (x_t, y_t, 1), (x_s, y_s) = (u, v) / guard(w)."""
    h, w = target_shape
    ones = F.ones_like(F.slice_axis(theta, axis=1, begin=0, end=1))
    homography = F.reshape(F.concat(theta, ones, dim=1), shape=(0, 3, 3))    # (N, 3, 3)
    source = F.dot(homography, F.reshape(target, shape=(3, -1)))              # (N, 3, P)
    u, v, depth = (F.slice_axis(source, axis=1, begin=k, end=k + 1) for k in range(3))
    depth = guard(F, depth, eps)
    # u / w and v / w as two same-shape divisions: broadcast_div's backward pass (a
    # reduction over the broadcast axis) took a fifth of the ST-CNN's step on a CPU.
    xy = F.concat(F.elemwise_div(u, depth), F.elemwise_div(v, depth), dim=1)  # (N, 2, P)
    return F.reshape(xy, shape=(0, 0, h, w), name=name)


def tps_grid(F, theta, basis, target_shape, name='grid'):
    """TPS grid generator: theta (N, 2K) = source positions of the K control points (all x,
    then all y), ``basis`` (K, H', W') from ``grid_constant`` -> grid (N, 2, H', W'),
    the product (N, 2, K) x (K, P). (Plain reshapes only, so that ONNX can express them.)"""
    h, w = target_shape
    source = F.reshape(theta, shape=(0, 2, -1))                               # (N, 2, K): x, y
    grid = F.dot(source, F.reshape(basis, shape=(0, -1)))                     # (N, 2, P)
    return F.reshape(grid, shape=(0, 0, h, w), name=name)


def projective_constant(target_shape, tps_grid=None):
    """(3, H', W'): the target points in homogeneous coordinates [x_t; y_t; 1]."""
    h, w = target_shape
    return np.concatenate([target_points(target_shape).T, np.ones((1, h * w))]).reshape(3, h, w)


def tps_constant(target_shape, tps_grid=4):
    """(K, H', W'): the transposed TPS basis M^T (``geometry.tps_basis``, P x K) of the
    control points on the target points: the TPS grid through source points S (K, 2) is
    then M S, a matrix product."""
    basis = tps_basis(control_points(tps_grid), target_points(target_shape))   # (P, K)
    return basis.T.reshape(-1, *target_shape)


# ---- the families: one entry each ---------------------------------------------------------

Family = namedtuple('Family', 'identity constant constant_name grid')
Family.__doc__ = """A transformer family:

identity(tps_grid) -> theta (T,) of the identity transformation (the regressor's bias);
constant(target_shape, tps_grid) -> the float array the grid generator needs, or None;
constant_name: the name of that constant among the block's parameters (None if none);
grid(F, theta, constant, target_shape, name=None) -> the sampling grid (N, 2, H', W'),
    its node named ``name`` in a graph (None: the family's usual name)."""

IDENTITY = np.array([1, 0, 0, 0, 1, 0], dtype=np.float32)   # the affine identity theta
FAMILIES = {
    'affine': Family(
        identity=lambda tps_grid: IDENTITY,
        constant=None, constant_name=None,
        grid=lambda F, theta, constant, shape, name=None: affine_grid(F, theta, shape, name)),
    'attention': Family(
        identity=lambda tps_grid: [1, 0, 0],                                  # s, tx, ty
        constant=None, constant_name=None,
        grid=lambda F, theta, constant, shape, name=None: affine_grid(
            F, attention_theta(F, theta), shape, name)),
    'projective': Family(
        identity=lambda tps_grid: [1, 0, 0, 0, 1, 0, 0, 0],                   # h33 = 1 implied
        constant=projective_constant, constant_name='target_grid',
        grid=lambda F, theta, constant, shape, name=None: projective_grid(
            F, theta, constant, shape, name or 'grid')),
    'tps': Family(
        identity=lambda tps_grid: control_points(tps_grid).T.ravel(),        # all x, then all y
        constant=tps_constant, constant_name='tps_basis',
        grid=lambda F, theta, constant, shape, name=None: tps_grid(
            F, theta, constant, shape, name or 'grid')),
}
TRANSFORMS = tuple(FAMILIES)


def family(transform):
    """The ``Family`` entry of ``transform``, or a ValueError naming the choices."""
    if transform not in FAMILIES:
        raise ValueError(f'transform must be one of {TRANSFORMS}, not {transform!r}')
    return FAMILIES[transform]


def identity_theta(transform='affine', tps_grid=4):
    """The theta (T,) of the identity transformation: the regressor's initial bias."""
    return np.array(family(transform).identity(tps_shape(tps_grid)), np.float32)


def theta_size(transform='affine', tps_grid=4):
    """T, the number of transformation parameters (the regressor's output size)."""
    return len(identity_theta(transform, tps_grid))


def grid_constant(transform, target_shape, tps_grid=4):
    """The constant (float32) a family's grid generator needs for output size (H', W'):
    (3, H', W') for projective, (K, H', W') for tps, None for affine and attention."""
    make = family(transform).constant
    return None if make is None else make(tuple(target_shape), tps_shape(tps_grid)).astype(np.float32)


@mx.init.register
class GridConstant(mx.init.Initializer):
    """Fills a grid constant (``grid_constant``) from the shape of the array it is given:
    (3, H', W') for projective, (K, H', W') for tps. The symbol's ``__init__`` attribute
    keeps these few arguments, not the array (which the params file holds)."""

    def __init__(self, transform, tps_grid=4):
        super().__init__(transform=transform, tps_grid=list(tps_shape(tps_grid)))
        self.transform, self.tps_grid = transform, tps_shape(tps_grid)

    def _init_weight(self, _, arr):
        arr[:] = grid_constant(self.transform, arr.shape[1:], self.tps_grid)


def sampling_grid(theta, transform, target_shape, tps_grid=4):
    """The grid (N, 2, H', W') a ``transform`` family's theta (N, T) samples on a
    ``target_shape`` (H', W') output, as a float32 numpy array, computed with mx.nd
    through the family's own grid generator and constant: what a SpatialTransformer
    with this theta feeds its sampler. ``tps_grid``: the TPS control grid (int n or
    (rows, cols)), used by 'tps' only."""
    theta = mx.nd.array(np.asarray(theta, np.float32).reshape(len(theta), -1))
    target_shape = tuple(int(n) for n in target_shape)
    constant = grid_constant(transform, target_shape, tps_grid)
    constant = None if constant is None else mx.nd.array(constant)
    return family(transform).grid(mx.nd, theta, constant, target_shape).asnumpy()


# ---- composition (compositional and inverse-compositional transformers) ------------------

COMPOSABLE = ('affine', 'attention', 'projective')   # the families that compose as 3x3 matrices
NOT_COMPOSABLE = 'the thin-plate spline through another spline\'s points is a different spline'


def theta_matrix(F, theta, transform):
    """theta (N, T) of an affine, attention or projective transformer -> the 3x3 matrix
    (N, 3, 3) that maps a target point (x_t, y_t, 1) to its source point (homogeneous):
    [[a, b, tx], [c, d, ty], [0, 0, 1]], [[s, 0, tx], [0, s, ty], [0, 0, 1]] or H."""
    if transform == 'attention':
        theta, transform = attention_theta(F, theta), 'affine'
    one = F.ones_like(F.slice_axis(theta, axis=1, begin=0, end=1))              # (N, 1)
    last = F.concat(F.zeros_like(one), F.zeros_like(one), one, dim=1) if transform == 'affine' \
        else one                                                                # h33 = 1
    return F.reshape(F.concat(theta, last, dim=1), shape=(0, 3, 3))


def matrix_theta(F, matrix, transform):
    """The inverse of ``theta_matrix``: (N, 3, 3) -> theta (N, T). A projective matrix is
    scaled to h33 = 1 first (|h33| kept at least PROJECTIVE_EPS, as ``guard`` does)."""
    flat = F.reshape(matrix, shape=(0, 9))
    part = lambda k, n=1: F.slice_axis(flat, axis=1, begin=k, end=k + n)   # noqa: E731
    if transform == 'affine':
        return part(0, 6)
    if transform == 'attention':                                     # s, tx, ty
        return F.concat(part(0), part(2), part(5), dim=1)
    return F.broadcast_div(part(0, 8), guard(F, part(8)))


def compose(F, theta, update, transform):
    """The transformation that applies ``update`` (N, T) in the frame of the image already
    warped by ``theta`` (N, T): M(theta) M(update), as a theta (N, T). The image warped by
    theta reads U at M(theta) t; warped again by the update it reads U at M(theta) M(update) t,
    which is one warp of U by the composition (IC-STN, Lin & Lucey 2017, section 3)."""
    if transform not in COMPOSABLE:
        raise ValueError(f'{transform} transformers do not compose ({NOT_COMPOSABLE}); '
                         f'compose one of {COMPOSABLE}')
    product = F.batch_dot(theta_matrix(F, theta, transform), theta_matrix(F, update, transform))
    return matrix_theta(F, product, transform)


# ---- the block ----------------------------------------------------------------------------

def default_localisation():
    """The original port's localisation net: two conv+pool stages and a 32-unit layer."""
    net = nn.HybridSequential(prefix='loc_')
    with net.name_scope():
        net.add(nn.Conv2D(8, kernel_size=7), nn.MaxPool2D(2, 2), nn.Activation('relu'),
                nn.Conv2D(10, kernel_size=5), nn.MaxPool2D(2, 2), nn.Activation('relu'),
                nn.Dense(32, activation='relu'))
    return net


class SpatialTransformer(nn.HybridBlock):
    """Localisation net -> theta -> sampling grid -> bilinear sampling.

    Input (N, C, H, W); returns ``(output, theta)`` with output (N, C, H', W') and
    theta (N, T) in the ``transform`` family's parameters (see the module docstring:
    'affine' T = 6, 'attention' 3, 'projective' 8, 'tps' 2K with K the points of
    ``tps_grid``, an int n for n x n or (rows, cols); default 4 x 4 = 16).
    ``target_shape`` (H', W') defaults to the H x W of the first input it sees.
    ``localisation`` is any block mapping the input to a feature vector, or a function
    returning one (called in the transformer's name scope, so that its parameters are
    named PREFIX_loc_...; default ``default_localisation``); a T-unit regressor on top
    predicts theta. The regressor starts with zero weights and the
    identity bias, so a fresh block returns its input. ``loc_lr_mult`` scales the
    learning rate of the localisation net and the regressor (``Parameter.lr_mult``,
    honoured by ``gluon.Trainer``).

    ``iterations`` K > 1 makes it compositional (IC-STN, Lin & Lucey, CVPR 2017): step k
    looks at the input warped by the parameters so far, predicts an update, and composes
    it with them (``compose``: M_k = M_(k-1) M(update_k), the first update read from the
    input itself); the final parameters warp the *original* input once, so nothing is
    resampled twice. ``per_step``: a localisation net and regressor for each step (the
    paper's c-STN, named PREFIX_step{k}_loc_... from the second step on, so a
    ``localisation`` must then be a function); by default one shared across the steps
    (IC-STN). Each update starts at the identity. Affine, attention and projective only
    (``COMPOSABLE``). The intermediate grids and samples are PREFIX_step{k}_grid and
    PREFIX_step{k}_bilinearsampler in a graph; the final ones keep the names above, and
    theta is the composed one. ``steps(x)`` gives the parameters after each step.

    ``input_grad=False`` where the input needs no gradient (the network's images): the
    sampler's backward pass then computes the grid's gradient only (``sample``).
    """

    def __init__(self, target_shape=None, localisation=None, loc_lr_mult=1.0, transform='affine',
                 tps_grid=4, iterations=1, per_step=False, input_grad=True, **kwargs):
        super().__init__(**kwargs)
        if int(iterations) != iterations or iterations < 1:
            raise ValueError(f'iterations must be an int >= 1, not {iterations!r}')
        if iterations > 1 and transform not in COMPOSABLE:
            raise ValueError(f'iterations {iterations}: {transform} transformers do not compose '
                             f'({NOT_COMPOSABLE}); use one of {COMPOSABLE}, or iterations 1')
        if iterations > 1 and per_step and isinstance(localisation, nn.Block):
            raise ValueError('per_step makes a localisation net for every step: pass a function '
                             'that returns one, not a block')
        self.transform, self.iterations, self.per_step = transform, int(iterations), bool(per_step)
        self.input_grad = bool(input_grad)
        self.tps_grid = tps_shape(tps_grid)
        identity = identity_theta(transform, self.tps_grid)
        constant_name = family(transform).constant_name
        self.target_shape = tuple(target_shape) if target_shape else None
        with self.name_scope():
            localisation_factory = None if isinstance(localisation, nn.Block) else localisation
            if localisation is None or not isinstance(localisation, nn.Block):
                localisation = (localisation or default_localisation)()   # named stn_loc_...
            self.localisation = localisation
            self.regressor = regressor(identity)
            self.later_steps = []   # per_step: (localisation, regressor) of steps 2 .. K
            for k in range(1, self.iterations if self.per_step else 1):
                step = nn.HybridSequential(prefix=f'step{k}_')
                with step.name_scope():
                    step.add((localisation_factory or default_localisation)(), regressor(identity))
                self.register_child(step, f'step{k}')
                self.later_steps.append(step)
        if constant_name is not None:
            # (3 or K, H', W'); H' and W' are filled in once target_shape is known.
            rows = len(grid_constant(transform, (1, 1), self.tps_grid))
            self.grid_constant = self.params.get(
                constant_name, shape=(rows, 0, 0), init=GridConstant(transform, self.tps_grid),
                differentiable=False, allow_deferred_init=True)
            self._shape_grid_constant()
        for param in self.collect_params().values():
            param.lr_mult = loc_lr_mult

    def _shape_grid_constant(self):
        if self.target_shape is not None and hasattr(self, 'grid_constant'):
            self.grid_constant.shape = (self.grid_constant.shape[0], *self.target_shape)

    def default_target_shape(self, x):
        """Set an unset ``target_shape`` to the H x W of ``x``, an NDArray.

        Blocks that hybridize a transformer inside them call this from their own
        ``forward``: inside a graph the input's shape is not known.
        """
        if self.target_shape is None:
            if not isinstance(x, mx.nd.NDArray):
                raise ValueError('SpatialTransformer: pass target_shape=(H, W) to build it '
                                 'on a Symbol; it can only infer it from an NDArray input.')
            self.set_target_shape(x.shape[2:])

    def set_target_shape(self, shape):
        """Set an unset ``target_shape`` to (H', W') ``shape``."""
        if self.target_shape is None:
            self.target_shape = tuple(int(n) for n in shape)
            self._shape_grid_constant()

    def forward(self, x, *args):
        self.default_target_shape(x)
        return super().forward(x, *args)

    def step(self, k):
        """The (localisation, regressor) of step k (0-based)."""
        if k == 0 or not self.per_step:
            return self.localisation, self.regressor
        step = self.later_steps[k - 1]
        return step[0], step[1]

    def hybrid_forward(self, F, x, grid_constant=None):
        theta = self.composed(F, x, grid_constant)[-1]
        grid = FAMILIES[self.transform].grid(F, theta, grid_constant, self.target_shape)
        return sample(F, x, grid, input_grad=self.input_grad), theta

    def composed(self, F, x, grid_constant=None):
        """The K thetas (N, T) after each step, composed so far: step 1 reads ``x`` itself,
        step k the input warped by the thetas of step k - 1 (one step: the paper's theta)."""
        grid_of = FAMILIES[self.transform].grid
        thetas = [self.regressor(self.localisation(x))]
        for k in range(1, self.iterations):
            seen = sample(F, x, grid_of(F, thetas[-1], grid_constant, self.target_shape,
                                        f'step{k}_grid'), f'step{k}_bilinearsampler',
                          self.input_grad)
            localisation, regressor = self.step(k)
            thetas.append(compose(F, thetas[-1], regressor(localisation(seen)), self.transform))
        return thetas

    def steps(self, x):
        """``composed`` for an NDArray ``x`` (N, C, H, W): a list of K thetas (N, T); the
        last is what ``self(x)`` returns."""
        self.default_target_shape(x)
        constant = self.grid_constant.data(x.context) if hasattr(self, 'grid_constant') else None
        return self.composed(mx.nd, x, constant)


def regressor(identity):
    """The Dense layer that predicts theta (T = len(identity)): zero weights and the identity
    as bias, so that it starts at the identity transformation."""
    return nn.Dense(len(identity), weight_initializer=mx.init.Zero(), prefix='regressor_',
                    bias_initializer=mx.init.Constant(identity))
