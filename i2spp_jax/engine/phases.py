"""The paper's building blocks (Alg. 1) as `Phase` settings of one step function, and schedules.

A phase says which variables move (w_plus, noise, or both), under which loss (the λ of Eq. 1), with
which optimiser, and which data it uses: the name of its mask set (`masks`: loss masks M_m, M_p,
M_s and variable masks w_m, n_m, chosen per phase so that one `embed()` call runs a whole
algorithm) and its y (the second target of Eq. 1: the given target_y, target_x, or "previous" = the
render of the variables this phase starts from, i.e. the previous phase's result), and its x
(target_x, or target_y for a phase that fits the other image).

    W_l(200, mse2=1e-4, masks="known")                 # inpainting's W+ phase
    Mk_n(1000, masks="known", y="previous")            # then the noise, y = G(W+ result)
"""

import dataclasses
import functools
import math
import numbers
from typing import Any, Optional

from i2spp_jax.losses import LossWeights

Y_SOURCES = ("y", "x", "previous")  # target_y, target_x, or the render of the phase's start
DEFAULT_MASKS = "default"
COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Phase:
    """One optimisation phase: which variables move, under which loss, with which optimiser."""

    name: str  # shown in logs and history, e.g. "W_l" or "Mk_n"
    num_steps: int  # iterations of this phase
    update_w: bool  # optimise w_plus (layers further restricted by the w_m mask)
    update_noise: bool  # optimise the noise maps (further restricted by the n_m mask)
    weights: Any = dataclasses.field(default_factory=LossWeights)  # λ of Eq. 1 (LossWeights)
    w_lr: float = 0.01  # learning rate for w_plus
    w_optimizer: str = "adam"  # "adam" or "sgd" (the paper's alternative: SGD lr 0.8)
    noise_lr: float = 5.0  # Adam learning rate for the noise maps
    resize_to: Optional[int] = 256  # VGG input resolution (None = the image's own)
    masks: str = DEFAULT_MASKS  # which mask set of embed(masks=...) this phase uses
    y: str = "y"  # Eq. 1's y: "y" (target_y), "x" (target_x) or "previous" (render of the phase's start)
    x: str = "x"  # Eq. 1's x: "x" (target_x) or "y" (target_y), e.g. a phase that restores the other image
    # How G modulates its convolutions in the step: True = per-image weights in a grouped convolution,
    # False = scaled activations around one shared, batched convolution, None = `modconv_for` picks.
    # The same function (float rounding apart); only the speed differs (experiments/benchmark).
    fused_modconv: Optional[bool] = None
    # The convolutions' dtype in G and VGG: "float32", or "bfloat16" (the bf16 mode: tensor-core
    # convolutions with float32 accumulation; variables, optimiser, losses and metrics stay float32).
    compute_dtype: str = "float32"
    # With compute_dtype "bfloat16": the phase's last float32_steps iterations run in float32 (same
    # optimiser state), so that the result is a float32 optimum (bf16 alone stops ~0.5 dB short on W+
    # and far short on the noise maps: BUILD_NOTES.md, issue 9).
    float32_steps: int = 0
    # With compute_dtype "bfloat16": the phase's first float32_head_steps iterations run in float32
    # too, where the optimisation picks its basin (BUILD_NOTES.md, "float32 head").
    float32_head_steps: int = 0
    # VGG16's dtype in this phase: None = compute_dtype's; "float32" keeps the perceptual and style
    # terms float32 in the bf16 mode (G alone in bf16).
    vgg_dtype: Optional[str] = None
    # With compute_dtype "bfloat16": once an image of the batch reaches this PSNR (dB, against its
    # target x), the rest of the phase runs in float32. Near bf16's rounding floor (the demo
    # generator's bf16 render is 45-46 dB from its float32 render) bf16's gradients are mostly
    # rounding, and the W+ phase stalls there (BUILD_NOTES.md, "The bf16 mode's accuracy"). None = never.
    float32_above_db: Optional[float] = None

    def __post_init__(self):
        if self.x not in ("x", "y"):
            raise ValueError(f"phase {self.name}: x must be 'x' or 'y', got {self.x!r}")
        if self.y not in Y_SOURCES:
            raise ValueError(f"phase {self.name}: y must be one of {Y_SOURCES}, got {self.y!r}")
        if self.num_steps < 0:
            raise ValueError(f"phase {self.name}: num_steps must be >= 0, got {self.num_steps}")
        if self.w_optimizer not in ("adam", "sgd"):
            raise ValueError(f"phase {self.name}: w_optimizer must be 'adam' or 'sgd', got {self.w_optimizer!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"phase {self.name}: compute_dtype must be one of {COMPUTE_DTYPES}, "
                             f"got {self.compute_dtype!r}")
        if not 0 <= self.float32_steps <= self.num_steps:
            raise ValueError(f"phase {self.name}: float32_steps must be in [0, num_steps={self.num_steps}], "
                             f"got {self.float32_steps}")
        if not 0 <= self.float32_head_steps <= self.num_steps - self.float32_steps:
            raise ValueError(f"phase {self.name}: float32_head_steps must be in [0, num_steps - float32_steps = "
                             f"{self.num_steps - self.float32_steps}], got {self.float32_head_steps}")
        if self.float32_above_db is not None and not math.isfinite(self.float32_above_db):
            raise ValueError(f"phase {self.name}: float32_above_db must be None or a finite PSNR in dB, "
                             f"got {self.float32_above_db}")
        if self.vgg_dtype not in (None,) + COMPUTE_DTYPES:
            raise ValueError(f"phase {self.name}: vgg_dtype must be None or one of {COMPUTE_DTYPES}, "
                             f"got {self.vgg_dtype!r}")
        for name, lr, used in (("w_lr", self.w_lr, self.update_w), ("noise_lr", self.noise_lr, self.update_noise)):
            if used and not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr >= 0):
                raise ValueError(f"phase {self.name}: {name} must be a finite rate >= 0, got {lr!r}")
        for name, value in dataclasses.asdict(self.weights).items():
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0):
                raise ValueError(f"phase {self.name}: λ {name} must be a finite weight >= 0, got {value!r}")
        if not (self.update_w or self.update_noise):
            raise ValueError(f"phase {self.name} updates nothing: set update_w and/or update_noise")


# Fields added to Phase after runs were first checkpointed, with the value that means "as before".
# `phase_key` leaves them out at that value, so that a run started by an earlier version resumes.
ADDED_LATER = {"compute_dtype": "float32", "float32_steps": 0, "float32_head_steps": 0, "vgg_dtype": None,
               "float32_above_db": None}


def in_compute_dtype(phase: Phase, compute_dtype: str, *, tail: float = 0.0, head: float = 0.0,
                     above_db: Optional[float] = None) -> Phase:
    """`phase` run in `compute_dtype`: for bf16, its last `tail` fraction of iterations in float32, its
    first `head` fraction too (at most what the tail leaves), and the rest of it once an image
    reaches `above_db` dB; a float32 phase has none of these."""
    if compute_dtype == "float32":
        return dataclasses.replace(phase, compute_dtype=compute_dtype, float32_steps=0, float32_head_steps=0,
                                   float32_above_db=None)
    n = phase.num_steps
    tail_steps = int(round(tail * n))
    return dataclasses.replace(phase, compute_dtype=compute_dtype, float32_steps=tail_steps,
                               float32_head_steps=min(int(head * n), n - tail_steps), float32_above_db=above_db)


def phase_key(phase: Phase) -> str:
    """The phase as text, for run fingerprints: its repr, without the ADDED_LATER fields where they
    hold their old meaning (then exactly the repr an earlier version wrote)."""
    fields = [f for f in dataclasses.fields(phase)
              if f.repr and not (f.name in ADDED_LATER and getattr(phase, f.name) == ADDED_LATER[f.name])]
    return f"{type(phase).__qualname__}({', '.join(f'{f.name}={getattr(phase, f.name)!r}' for f in fields)})"


def modconv_for(phase: Phase, batch: int, backend: str) -> bool:
    """The fused_modconv a phase runs with: its own, or where it is None the faster one as measured
    on the CPU (BUILD_NOTES.md, issue 9). With one image the grouped convolution is a plain
    convolution with modulated weights: fastest when w is not optimised (the noise step, 1.1x);
    when w is, its gradient needs the weight gradient of that convolution, which XLA's CPU backend
    runs 4x slower than scaling activations. With several images the grouped convolution has one
    group per image and ran 2.3x slower on the CPU. Elsewhere (GPU, TPU: not yet measured here)
    activations, the choice that has no slow case on the CPU."""
    if phase.fused_modconv is not None:
        return phase.fused_modconv
    return backend == "cpu" and batch == 1 and not phase.update_w


def W_l(num_steps: int, *, lr: float = 0.01, optimizer: str = "adam", mse1: float = 1e-5, mse2: float = 0.0,
        percept: float = 1e-5, resize_to: Optional[int] = 256, masks: str = DEFAULT_MASKS, y: str = "y") -> Phase:
    """Masked W+ optimisation (noise fixed): λ_mse1 = λ_p = 1e-5, Adam lr 0.01 (or SGD lr 0.8)."""
    return Phase("W_l", num_steps, update_w=True, update_noise=False,
                 weights=LossWeights(style=0.0, mse1=mse1, mse2=mse2, percept=percept),
                 w_lr=lr, w_optimizer=optimizer, resize_to=resize_to, masks=masks, y=y)


def Mk_n(num_steps: int, *, lr: float = 5.0, mse1: float = 1e-5, mse2: float = 1e-5,
         resize_to: Optional[int] = 256, masks: str = DEFAULT_MASKS, y: str = "y", x: str = "x") -> Phase:
    """Masked noise optimisation (w fixed): λ_mse1 = λ_mse2 = 1e-5, no VGG term, Adam lr 5."""
    return Phase("Mk_n", num_steps, update_w=False, update_noise=True,
                 weights=LossWeights(style=0.0, mse1=mse1, mse2=mse2, percept=0.0),
                 noise_lr=lr, resize_to=resize_to, masks=masks, y=y, x=x)


def M_st(num_steps: int, *, lr: float = 0.01, style: float = 5e-7, content: float = 1e-5,
         resize_to: Optional[int] = 256, masks: str = DEFAULT_MASKS, y: str = "y") -> Phase:
    """Masked style transfer on w: λ_s = 5e-7 (Gram of conv3_3 under M_s against y), plus a content
    term λ_mse1 pulling the region M_m (give M_m = 1 − style region) to x.

    The paper's table gives Adam lr 5 for this block; on w that diverges, so the default is the W_l
    rate 0.01 (pass lr=5.0 to follow the table literally).
    """
    return Phase("M_st", num_steps, update_w=True, update_noise=False,
                 weights=LossWeights(style=style, mse1=content, mse2=0.0, percept=0.0),
                 w_lr=lr, resize_to=resize_to, masks=masks, y=y)


def Joint(num_steps: int, *, w_lr: float = 0.01, noise_lr: float = 5.0, mse1: float = 1e-5,
          percept: float = 1e-5, resize_to: Optional[int] = 256) -> Phase:
    """W+ and noise together under the W_l loss (the paper's ablation: worse and edits badly)."""
    return Phase("joint", num_steps, update_w=True, update_noise=True,
                 weights=LossWeights(style=0.0, mse1=mse1, mse2=0.0, percept=percept),
                 w_lr=w_lr, noise_lr=noise_lr, resize_to=resize_to)


SCHEDULES = ("w_then_noise", "joint", "noise_then_w", "w_only")


def schedule(name: str, w_steps: int, noise_steps: int, *, w_lr: float = 0.01, w_optimizer: str = "adam",
             noise_lr: float = 5.0, percept: float = 1e-5, resize_to: Optional[int] = 256) -> tuple[Phase, ...]:
    """The paper's reconstruction schedules (Alg. 2 and its ablation), all over w_steps + noise_steps:

      w_then_noise: W_l for w_steps, then Mk_n for noise_steps (the method).
      joint:        W+ and noise together for w_steps + noise_steps.
      noise_then_w: Mk_n for noise_steps, then W_l for w_steps.
      w_only:       W_l for w_steps + noise_steps (noise stays at its initial maps).
    """
    w = functools.partial(W_l, lr=w_lr, optimizer=w_optimizer, percept=percept, resize_to=resize_to)
    n = functools.partial(Mk_n, lr=noise_lr, resize_to=resize_to)
    if name == "w_then_noise":
        return (w(w_steps), n(noise_steps))
    if name == "joint":
        if w_optimizer != "adam":
            raise ValueError("the joint schedule uses Adam for w")
        return (Joint(w_steps + noise_steps, w_lr=w_lr, noise_lr=noise_lr, percept=percept, resize_to=resize_to),)
    if name == "noise_then_w":
        return (n(noise_steps), w(w_steps))
    if name == "w_only":
        return (w(w_steps + noise_steps),)
    raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
