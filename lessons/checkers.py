"""The checkers of the lessons' coded exercises.

Each core lesson ends with an exercise in ``lessons/exercises/NN_name.py``: functions a
learner completes, which start out raising ``NotImplementedError``.  Its checker here calls
them on small float64 inputs and compares every output with minimlp's own functions (which
the test suite gradient-checks) or with finite differences, and says what is wrong: which
function, which output or gradient, its shape, how far off and where.  Worked answers are
in ``lessons/solutions/``.

    python lessons/run.py 02 --exercise                 # check lessons/exercises/02_linear.py
    python lessons/run.py 02 --exercise my_linear.py    # or your own copy of it
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from minimlp import functional as F
from minimlp.gradcheck import rel_error

LESSONS_DIR = Path(__file__).resolve().parent
EXERCISES_DIR = LESSONS_DIR / "exercises"
SOLUTIONS_DIR = LESSONS_DIR / "solutions"
TOL = 1e-7  # float64 throughout: a right answer is ~1e-12 off, a wrong one ~1e-3 to 1


class ExerciseFailed(Exception):
    """What is wrong with a learner's answer, in one or two sentences."""


@dataclass(frozen=True)
class Exercise:
    stem: str  # the lesson's file stem, e.g. "02_linear": exercises/02_linear.py
    functions: tuple[str, ...]  # what the learner writes
    check: Callable[[ModuleType], list[str]]  # raises ExerciseFailed, or returns what passed

    @property
    def stub(self) -> Path:
        return EXERCISES_DIR / f"{self.stem}.py"

    @property
    def solution(self) -> Path:
        return SOLUTIONS_DIR / f"{self.stem}.py"


def load(path: Path) -> ModuleType:
    """Import a learner's file as a module; a file that does not import is a failure."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"exercise_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ExerciseFailed(f"{path} does not import: {type(exc).__name__}: {exc}") from exc
    return module


def call(module: ModuleType, name: str, *args: Any, **kwargs: Any) -> Any:
    """Call the learner's ``name``; a missing, unwritten or crashing function is a failure."""
    function = getattr(module, name, None)
    if not callable(function):
        raise ExerciseFailed(f"{name} is missing: the file must define a function of that name")
    try:
        return function(*args, **kwargs)
    except NotImplementedError as exc:
        raise ExerciseFailed(f"{name} is not written yet (it raises NotImplementedError)") from exc
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        raise ExerciseFailed(
            f"{name} raised {type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"
        ) from exc


def unpack(name: str, result: Any, what: tuple[str, ...]) -> tuple:
    """The learner's tuple of results, checked for its length."""
    if not isinstance(result, tuple) or len(result) != len(what):
        got = f"a tuple of {len(result)}" if isinstance(result, tuple) else type(result).__name__
        raise ExerciseFailed(f"{name} should return a tuple of {len(what)} ({', '.join(what)}), got {got}")
    return result


def same(what: str, yours: Any, expected: Any, tol: float = TOL, hint: str = "", floor: float = 0.0) -> str:
    """Compare one output with the right answer; fail with a message that says how it differs.

    ``floor``: the smallest scale the error is measured against (lesson 8), for arrays
    whose right value may be rounding noise around zero.
    """
    expected = np.asarray(expected, dtype=np.float64)
    if yours is None or not isinstance(yours, (np.ndarray, float, int, np.floating)):
        raise ExerciseFailed(f"{what} should be an array of shape {expected.shape}, got {type(yours).__name__}")
    yours = np.asarray(yours, dtype=np.float64)
    if yours.shape != expected.shape:
        extra = " (its transpose would fit: a transposed product?)" if yours.shape == expected.shape[::-1] else ""
        raise ExerciseFailed(f"{what} has shape {yours.shape}, expected {expected.shape}{extra}")
    bad = ~np.isfinite(yours)
    if bad.any():
        raise ExerciseFailed(f"{what} has {int(bad.sum())} NaN or infinite entries{hint and '; ' + hint}")
    err = rel_error(yours, expected, floor=floor)
    if err <= tol:
        return f"{what}: right (relative error {err:.1e})"
    message = f"{what} is wrong: relative error {err:.2e}"
    dot = float((expected * expected).sum())
    ratio = float((yours * expected).sum()) / dot if dot else 0.0
    if dot and not np.isclose(ratio, 1.0) and rel_error(yours, ratio * expected) <= 1e-6:
        message += f"; it is {ratio:.6g} times the right answer"
    elif yours.size > 1 and rel_error(np.sort(yours, axis=None), np.sort(expected, axis=None)) <= 1e-3 * err * tol:
        message += "; the right numbers in the wrong places (an axis order or a transpose?)"
    else:
        index = np.unravel_index(int(np.abs(yours - expected).argmax()), yours.shape)
        at = f" at index {tuple(int(i) for i in index)}" if yours.ndim else ""
        message += f"; largest difference{at}: yours {yours[index]:.6g}, expected {expected[index]:.6g}"
    raise ExerciseFailed(message + (f" ({hint})" if hint else ""))


def perturbed_ff_model(**overrides: Any) -> Any:
    """A small float64 FF model whose every parameter is moved off its initial value."""
    import minimlp

    config = dict(img_size=8, patch_size=4, in_chans=3, num_classes=5, embed_dim=8, depth=1, dtype="float64")
    model = minimlp.create_model("ff_tiny", **{**config, **overrides})
    rng = np.random.default_rng(11)
    model.store.flat_params[:] += 0.3 * rng.standard_normal(model.store.flat_params.size)
    return model


# --------------------------------------------------------------------------------------
# Lesson 1: patchify and unpatchify with reshapes and one transpose.
# --------------------------------------------------------------------------------------
def check_patches(m: ModuleType) -> list[str]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 8, 12))  # B = 2, C = 3, a 2 x 3 grid of 4 x 4 patches
    P = 4
    done = [same("patchify(x, 4)", call(m, "patchify", x.copy(), P), F.patchify(x, P))]
    patches = rng.standard_normal((6, 2, 48))
    done.append(
        same(
            "unpatchify(patches, x.shape, 4)",
            call(m, "unpatchify", patches, x.shape, P),
            F.unpatchify(patches, x.shape, P),
        )
    )
    back = call(m, "unpatchify", call(m, "patchify", x.copy(), P), x.shape, P)
    done.append(same("unpatchify(patchify(x))", back, x, hint="it should give x back"))
    return done


# --------------------------------------------------------------------------------------
# Lesson 2: the patch embedding's backward, from patchify and the linear backward.
# --------------------------------------------------------------------------------------
def check_linear(m: ModuleType) -> list[str]:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 8, 12))
    K, bias = rng.standard_normal((5, 3, 4, 4)), rng.standard_normal(5)  # D = 5
    tokens, cache = F.patch_embed_forward(x, K, bias)
    done = [same("patch_embed_forward", call(m, "patch_embed_forward", x.copy(), K.copy(), bias.copy()), tokens)]
    dtokens = rng.standard_normal(tokens.shape)
    dK, dbias = np.zeros_like(K), np.zeros_like(bias)
    dx = F.patch_embed_backward(dtokens, cache, K, dK, dbias)
    result = call(m, "patch_embed_backward", dtokens.copy(), x.copy(), K.copy())
    yours = unpack("patch_embed_backward", result, ("dx", "dK", "dbias"))
    for what, y, e in zip(("dx", "dK", "dbias"), yours, (dx, dK, dbias), strict=True):
        done.append(same(f"patch_embed_backward: {what}", y, e))
    return done


# --------------------------------------------------------------------------------------
# Lesson 3: the derivative of the tanh approximation, against finite differences.
# --------------------------------------------------------------------------------------
def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def check_gelu(m: ModuleType) -> list[str]:
    rng = np.random.default_rng(3)
    x = np.concatenate([np.linspace(-8, 8, 33), 2 * rng.standard_normal(30)])
    dy = rng.standard_normal(x.shape)
    h = 1e-6  # elementwise function: one central difference per entry, all at once
    numeric = dy * (gelu_tanh(x + h) - gelu_tanh(x - h)) / (2 * h)
    dx = call(m, "gelu_tanh_backward", dy.copy(), x.copy())
    return [
        same(
            "gelu_tanh_backward: dx",
            dx,
            numeric,
            tol=1e-8,
            hint="compared with central differences of gelu_tanh, times dy",
        )
    ]


# --------------------------------------------------------------------------------------
# Lesson 4: LayerNorm over the tokens of a (T, B, D) array.
# --------------------------------------------------------------------------------------
def check_layernorm(m: ModuleType) -> list[str]:
    rng = np.random.default_rng(4)
    T, B, D = 5, 3, 4
    x = 2.0 + 3.0 * rng.standard_normal((T, B, D))
    w, b = 1 + 0.5 * rng.standard_normal(T), 0.3 * rng.standard_normal(T)
    y, cache = F.layernorm_forward(x, w, b, axis=0)
    done = [same("layernorm_tokens_forward", call(m, "layernorm_tokens_forward", x.copy(), w.copy(), b.copy()), y)]
    dy = rng.standard_normal(x.shape)
    dw, db = np.zeros(T), np.zeros(T)
    dx = F.layernorm_backward(dy, cache, w, dw, db)
    yours = unpack(
        "layernorm_tokens_backward",
        call(m, "layernorm_tokens_backward", dy.copy(), x.copy(), w.copy()),
        ("dx", "dw", "db"),
    )
    for what, yy, e in zip(("dx", "dw", "db"), yours, (dx, dw, db), strict=True):
        done.append(same(f"layernorm_tokens_backward: {what}", yy, e))
    return done


# --------------------------------------------------------------------------------------
# Lesson 5: the mean cross-entropy with label smoothing, and its gradient.
# --------------------------------------------------------------------------------------
def check_cross_entropy(m: ModuleType) -> list[str]:
    from minimlp.loss import cross_entropy_backward, cross_entropy_forward

    rng = np.random.default_rng(5)
    B, K = 6, 10
    done = []
    for smoothing, scale in ((0.0, 3.0), (0.1, 3.0), (0.1, 1000.0)):
        logits, labels = scale * rng.standard_normal((B, K)), rng.integers(0, K, B)
        loss, cache = cross_entropy_forward(logits, labels, smoothing)
        result = call(m, "cross_entropy", logits.copy(), labels.copy(), smoothing)
        yours = unpack("cross_entropy", result, ("loss", "dlogits"))
        case = f"cross_entropy(smoothing={smoothing}, logits of size ~{scale:g})"
        hint = "exp overflows: subtract each row's largest logit first" if scale > 100 else ""
        done.append(same(f"{case}: loss", yours[0], loss, hint=hint))
        done.append(
            same(
                f"{case}: dlogits",
                yours[1],
                cross_entropy_backward(cache),
                hint=hint or "the loss is a mean over the batch",
            )
        )
    return done


# --------------------------------------------------------------------------------------
# Lesson 6: the feed-forward layer over patches, forward and backward.
# --------------------------------------------------------------------------------------
def patch_ff_reference(
    x: np.ndarray, W1: np.ndarray, b1: np.ndarray, W2: np.ndarray, b2: np.ndarray, dy: np.ndarray
) -> tuple[np.ndarray, tuple]:
    u, c1 = F.linear_forward(x, W1, b1, axis=0)
    g, c_act = F.gelu_forward(u)
    y, c2 = F.linear_forward(g, W2, b2, axis=0)
    grads = [np.zeros_like(a) for a in (W1, b1, W2, b2)]
    dg = F.linear_backward(dy, c2, W2, grads[2], grads[3])
    dx = F.linear_backward(F.gelu_backward(dg, c_act), c1, W1, grads[0], grads[1])
    return y, (dx, *grads)


def check_patch_ff(m: ModuleType) -> list[str]:
    rng = np.random.default_rng(6)
    T, B, D, H = 5, 3, 4, 12
    x = rng.standard_normal((T, B, D))
    W1, b1 = 0.5 * rng.standard_normal((H, T)), 0.3 * rng.standard_normal(H)
    W2, b2 = 0.5 * rng.standard_normal((T, H)), 0.3 * rng.standard_normal(T)
    dy = rng.standard_normal((T, B, D))
    y, grads = patch_ff_reference(x, W1, b1, W2, b2, dy)
    args = (x.copy(), W1.copy(), b1.copy(), W2.copy(), b2.copy())
    done = [same("patch_ff_forward", call(m, "patch_ff_forward", *args), y)]
    names = ("dx", "dW1", "db1", "dW2", "db2")
    yours = unpack("patch_ff_backward", call(m, "patch_ff_backward", dy.copy(), *args), names)
    for what, yy, e in zip(names, yours, grads, strict=True):
        done.append(same(f"patch_ff_backward: {what}", yy, e))
    return done


# --------------------------------------------------------------------------------------
# Lesson 7: the block in the paper's (B, T, D) layout, against FFBlock.forward/backward.
# --------------------------------------------------------------------------------------
def check_block(m: ModuleType) -> list[str]:
    model = perturbed_ff_model()
    block, prefix = model.blocks[0], "blocks.0."
    W = {k[len(prefix) :]: v.copy() for k, v in model.params.items() if k.startswith(prefix)}
    rng = np.random.default_rng(7)
    T, D = model.config.num_tokens, model.config.embed_dim
    x = rng.standard_normal((4, T, D))  # (B, T, D), the paper's layout
    out, cache = block.forward(x.transpose(1, 0, 2).copy(), train=False, rng=None)
    result = unpack("paper_block_forward", call(m, "paper_block_forward", x.copy(), dict(W)), ("out", "cache"))
    done = [same("paper_block_forward: out", result[0], out.transpose(1, 0, 2))]
    dout = rng.standard_normal(x.shape)
    model.zero_grad()
    dx = block.backward(dout.transpose(1, 0, 2).copy(), cache)
    yours = unpack(
        "paper_block_backward", call(m, "paper_block_backward", dout.copy(), result[1], dict(W)), ("dx", "dW")
    )
    done.append(same("paper_block_backward: dx", yours[0], dx.transpose(1, 0, 2)))
    if not isinstance(yours[1], dict) or set(yours[1]) != set(W):
        raise ExerciseFailed(f"paper_block_backward's dW should be a dict with the keys of W: {sorted(W)}")
    for k in W:
        done.append(same(f"paper_block_backward: dW[{k!r}]", yours[1][k], model.grads[prefix + k]))
    return done


# --------------------------------------------------------------------------------------
# Lesson 8: central differences and the relative error.
# --------------------------------------------------------------------------------------
def check_gradcheck(m: ModuleType) -> list[str]:
    from minimlp.gradcheck import numerical_gradient

    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 4))
    w = rng.standard_normal((3, 4))
    before = x.copy()
    grad = call(m, "numerical_gradient", lambda: float((np.sin(x) * w).sum()), x)
    if not np.array_equal(x, before):
        raise ExerciseFailed(
            "numerical_gradient changed x: restore every entry exactly after nudging it "
            "(put back the saved value; adding h and subtracting it again rounds)"
        )
    central = "a forward difference (f(x+h) - f(x)) / h is off by about h; use the central one"
    done = [same("numerical_gradient of sum(sin(x) * w)", grad, np.cos(x) * w, tol=1e-8, hint=central)]
    # With a large h, a forward difference is off by ~h, a central one by ~h²: tell them apart.
    cube = call(m, "numerical_gradient", lambda: float((x**3 * w).sum()), x, 1e-3)
    reference = numerical_gradient(lambda: float((x**3 * w).sum()), x, 1e-3)
    done.append(same("numerical_gradient of sum(x**3 * w) with h = 1e-3", cube, reference, tol=1e-9, hint=central))
    cases = [
        (np.array([1.0, 2.0]), np.array([1.0, 2.0 + 2e-9])),
        (np.array([1.0, 2.0]), np.array([-1.0, 2.0])),
        (np.zeros(3), np.zeros(3)),
        (np.array([[1e-8, 3e-8]]), np.array([[2e-8, 3e-8]])),
        (np.array([100.0, 0.1]), np.array([100.0, 0.2])),
    ]
    for a, b in cases:
        yours = call(m, "rel_error", a.copy(), b.copy())
        done.append(
            same(
                f"rel_error({a.tolist()}, {b.tolist()})",
                yours,
                rel_error(a, b),
                tol=1e-12,
                hint="the largest difference over the largest entry of either array; 0 when both are 0",
            )
        )
    return done


# --------------------------------------------------------------------------------------
# Lesson 9: Adam with L2 decay in the gradient, against minimlp's AdamW.
# --------------------------------------------------------------------------------------
def check_optimizers(m: ModuleType) -> list[str]:
    from minimlp import optim

    rng = np.random.default_rng(9)
    n, num_decay = 20, 12
    hyper = dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=0.3)
    theta, state = rng.standard_normal(n), {}
    ref, ref_grads = theta.copy(), np.zeros(n)
    # Adam with L2 is AdamW without decoupled decay, fed the gradient g + λθ (decay group only).
    adam = optim.AdamW(ref, ref_grads, num_decay, lr=1e-2, betas=hyper["betas"], eps=hyper["eps"], weight_decay=0.0)
    for t, lr in enumerate([1e-2, 3e-2, 2e-2, 1e-2, 5e-3], start=1):
        g = rng.standard_normal(n)
        g[3] = 0.0  # a weight the loss does not care about: only the decay moves it
        ref_grads[:] = g
        ref_grads[:num_decay] += hyper["weight_decay"] * ref[:num_decay]
        adam.step(lr)
        g_before = g.copy()
        call(m, "adam_l2_update", theta, g, state, t, lr, num_decay, **hyper)
        if not np.array_equal(g, g_before):
            raise ExerciseFailed("adam_l2_update changed g: add the decay to a copy of the gradient")
        same(
            f"after step {t}: theta[:num_decay] (the group with decay)",
            theta[:num_decay],
            ref[:num_decay],
            hint="λθ is added to the gradient before the moments",
        )
        same(
            f"after step {t}: theta[num_decay:] (no decay)",
            theta[num_decay:],
            ref[num_decay:],
            hint="the bias corrections use 1 - beta**t",
        )
    return ["adam_l2_update: five steps match minimlp's AdamW fed g + λθ"]


# --------------------------------------------------------------------------------------
# Lesson 10: one optimizer step from a batch cut into parts (gradient accumulation).
# --------------------------------------------------------------------------------------
def check_training(m: ModuleType) -> list[str]:
    import minimlp
    from minimlp import optim
    from minimlp.loss import cross_entropy_backward, cross_entropy_forward

    config = dict(img_size=8, patch_size=4, in_chans=1, num_classes=5, embed_dim=8, depth=2, dtype="float64")
    ours, yours = (minimlp.create_model("ff_tiny", seed=3, **config) for _ in range(2))
    # SGD, not Adam: Adam would blow the rounding noise of the gradients that are zero by
    # design (lesson 8) up to whole steps, and the two runs would part for no fault of yours.
    opt_ours = optim.create_optimizer("sgd", ours, lr=0.1, momentum=0.9, weight_decay=0.05)
    opt_yours = optim.create_optimizer("sgd", yours, lr=0.1, momentum=0.9, weight_decay=0.05)
    rng = np.random.default_rng(10)
    done = []
    for step in (1, 2):
        x, labels = rng.standard_normal((7, 1, 8, 8)), rng.integers(0, 5, 7)
        logits, cache = ours.forward(x, train=True)
        loss, loss_cache = cross_entropy_forward(logits, labels, 0.1)
        ours.zero_grad()
        ours.backward(cross_entropy_backward(loss_cache), cache, input_grad=False)
        opt_ours.step(0.1)
        your_loss = call(m, "accumulated_step", yours, opt_yours, x.copy(), labels.copy(), 0.1, 3, 0.1)
        same(
            f"step {step}: the loss accumulated_step returns",
            your_loss,
            loss,
            hint="the mean over the whole batch: weight each part's mean by its share",
        )
        hint = (
            "did you weight each part's gradient by its share of the batch?"
            if step == 1
            else "step 1 matched: did you zero the gradients before the first part?"
        )
        for name in ours.params:
            same(f"step {step}: parameter {name}", yours.params[name], ours.params[name], hint=hint, floor=1.0)
        done.append(f"step {step}: the loss and every parameter match one step on the whole batch")
    return done


# --------------------------------------------------------------------------------------
# Lesson 13: a whole attention layer (qkv, heads, attention, merge, proj) for one image.
# --------------------------------------------------------------------------------------
def attention_reference(
    x: np.ndarray, Wqkv: np.ndarray, bqkv: np.ndarray, Wproj: np.ndarray, bproj: np.ndarray, heads: int, dy: np.ndarray
) -> tuple[np.ndarray, tuple]:
    x3 = x[:, None, :]  # (T, 1, D): a batch of one image
    qkv, c_qkv = F.linear_forward(x3, Wqkv, bqkv)
    q, k, v = F.split_heads_forward(qkv, heads)
    ctx, c_attn = F.attention_forward(q, k, v)
    y, c_proj = F.linear_forward(F.merge_heads_forward(ctx), Wproj, bproj)
    grads = [np.zeros_like(a) for a in (Wqkv, bqkv, Wproj, bproj)]
    dctx = F.merge_heads_backward(F.linear_backward(dy[:, None, :], c_proj, Wproj, grads[2], grads[3]), heads)
    dqkv = F.split_heads_backward(*F.attention_backward(dctx, c_attn))
    dx = F.linear_backward(dqkv, c_qkv, Wqkv, grads[0], grads[1])
    return y[:, 0], (dx[:, 0], *grads)


def check_attention(m: ModuleType) -> list[str]:
    rng = np.random.default_rng(13)
    T, D, heads = 5, 6, 2
    x = rng.standard_normal((T, D))
    Wqkv, bqkv = 0.5 * rng.standard_normal((3 * D, D)), 0.3 * rng.standard_normal(3 * D)
    Wproj, bproj = 0.5 * rng.standard_normal((D, D)), 0.3 * rng.standard_normal(D)
    dy = rng.standard_normal((T, D))
    y, grads = attention_reference(x, Wqkv, bqkv, Wproj, bproj, heads, dy)
    args = (x.copy(), Wqkv.copy(), bqkv.copy(), Wproj.copy(), bproj.copy(), heads)
    done = [
        same(
            "attention_layer_forward",
            call(m, "attention_layer_forward", *args),
            y,
            hint="qkv's rows are q, k, v, each split into heads of D / num_heads",
        )
    ]
    names = ("dx", "dWqkv", "dbqkv", "dWproj", "dbproj")
    yours = unpack("attention_layer_backward", call(m, "attention_layer_backward", dy.copy(), *args), names)
    for what, yy, e in zip(names, yours, grads, strict=True):
        done.append(same(f"attention_layer_backward: {what}", yy, e))
    return done


# --------------------------------------------------------------------------------------
# Lesson 14: the end of a mean-pooled model (MLP-Mixer): LayerNorm every token, average, head.
# --------------------------------------------------------------------------------------
def check_model_backward(m: ModuleType) -> list[str]:
    rng = np.random.default_rng(14)
    T, B, D, K = 5, 3, 4, 6
    t = 1.0 + 2.0 * rng.standard_normal((T, B, D))
    norm_w, norm_b = 1 + 0.5 * rng.standard_normal(D), 0.3 * rng.standard_normal(D)
    head_w, head_b = rng.standard_normal((K, D)), rng.standard_normal(K)
    h, c_norm = F.layernorm_forward(t, norm_w, norm_b)
    pooled, shape = F.mean_pool_forward(h)
    logits, c_head = F.linear_forward(pooled, head_w, head_b)
    args = (t.copy(), norm_w.copy(), norm_b.copy(), head_w.copy(), head_b.copy())
    done = [same("mean_head_forward", call(m, "mean_head_forward", *args), logits)]
    dlogits = rng.standard_normal((B, K))
    grads = [np.zeros_like(a) for a in (norm_w, norm_b, head_w, head_b)]
    dpooled = F.linear_backward(dlogits, c_head, head_w, grads[2], grads[3])
    dt = F.layernorm_backward(F.mean_pool_backward(dpooled, shape), c_norm, norm_w, grads[0], grads[1])
    names = ("dt", "dnorm_w", "dnorm_b", "dhead_w", "dhead_b")
    yours = unpack("mean_head_backward", call(m, "mean_head_backward", dlogits.copy(), *args), names)
    for what, yy, e in zip(names, yours, (dt, *grads), strict=True):
        done.append(
            same(
                f"mean_head_backward: {what}",
                yy,
                e,
                hint="every token receives 1/T of the pooled gradient" if what == "dt" else "",
            )
        )
    return done


EXERCISES: dict[str, Exercise] = {
    e.stem[:2]: e
    for e in (
        Exercise("01_patches", ("patchify", "unpatchify"), check_patches),
        Exercise("02_linear", ("patch_embed_forward", "patch_embed_backward"), check_linear),
        Exercise("03_gelu", ("gelu_tanh_backward",), check_gelu),
        Exercise("04_layernorm", ("layernorm_tokens_forward", "layernorm_tokens_backward"), check_layernorm),
        Exercise("05_cross_entropy", ("cross_entropy",), check_cross_entropy),
        Exercise("06_patch_ff", ("patch_ff_forward", "patch_ff_backward"), check_patch_ff),
        Exercise("07_block", ("paper_block_forward", "paper_block_backward"), check_block),
        Exercise("08_gradcheck", ("numerical_gradient", "rel_error"), check_gradcheck),
        Exercise("09_optimizers", ("adam_l2_update",), check_optimizers),
        Exercise("10_training", ("accumulated_step",), check_training),
        Exercise("13_attention", ("attention_layer_forward", "attention_layer_backward"), check_attention),
        Exercise("14_model_backward", ("mean_head_forward", "mean_head_backward"), check_model_backward),
    )
}


def run_exercise(number: str, path: Path | None = None) -> int:
    """Check a learner's file (default: the exercise file itself); print what passed or what is wrong."""
    exercise = EXERCISES.get(number.zfill(2)[:2])
    if exercise is None:
        print(f"lesson {number} has no coded exercise; these do: {', '.join(sorted(EXERCISES))}", file=sys.stderr)
        return 2
    path = Path(path) if path else exercise.stub
    if not path.is_file():
        print(
            f"{path}: no such file (give the file with your answer, or none to check {shown(exercise.stub)})",
            file=sys.stderr,
        )
        return 2
    try:
        passed = exercise.check(load(path))
    except ExerciseFailed as failure:
        print(f"{shown(path)}: not yet: {failure}", file=sys.stderr)
        return 1
    for line in passed:
        print(f"  ok  {line}")
    print(f"{shown(path)}: every check passed")
    return 0


def shown(path: Path) -> str:
    """The path as the reader would type it from where they are."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
