#!/usr/bin/python3
"""PaInvRL autograd reference (float64), independent of the C++ closed form.

Written from the paper (Sec. 3.3-3.4), /work/shared/DESIGN.md section 2 and docs/mask-step.md.

    python3 tools/reference/painvrl_ref.py compare DUMP_DIR [--rtol 1e-4]
    python3 tools/reference/painvrl_ref.py selftest
    python3 tools/reference/painvrl_ref.py epoch --data DIR [--threads 2] [--steps 50]
    python3 tools/reference/painvrl_ref.py mask-epoch [--device cuda] [--dtype float64]

See tools/reference/README.md.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
TINY = np.finfo(np.float64).tiny

SCALAR_KEYS = ["E", "N", "K", "D", "d", "H", "w1", "w2", "w3", "w4", "neg_weight", "kappa",
               "sigma", "lambda", "c", "s", "gamma_w", "attention", "pareto_normalize",
               "mask_optimizer"]
MLP_TENSORS = ["w1u", "w1i", "b1", "w2", "b2"]
INPUT_NAMES = (["Pt", "Pf", "T", "features", "beta_user", "beta_item", "ii_neighbors",
                "ii_weights", "W", "b", "mask", "env_offsets", "batch_users", "batch_items",
                "batch_negatives", "noise"])
MLP_INPUTS = [f"mlp{k}_{t}" for k in (1, 2) for t in MLP_TENSORS]


class DumpError(Exception):
    """A malformed or incomplete dump (missing key, missing file, shape mismatch)."""


# ----------------------------------------------------------------------------- the loss

def softplus(x):
    # log(1 + e^x); float64 with threshold 50 (error below e^-50), twice differentiable.
    return F.softplus(x, beta=1.0, threshold=50.0)


def build_terms(users, items, negatives, beta_user, beta_item, w1, w2, w3, w4, neg_weight,
                kappa=0.0, ii_neighbors=None, ii_weights=None, padded=True):
    """Flatten a batch into terms (u, j, c, y): positives, N negatives per positive and, when
    kappa > 0, the K item neighbours of each positive item (negative neighbour ids = padding;
    padded=False: the tables have none, and no boolean mask stalls a GPU on the host)."""
    N = negatives.shape[1]
    bu = beta_user[users]
    tu, tj = [users], [items]
    tc = [w1 + w2 * bu * beta_item[items]]
    ty = [torch.ones(users.numel(), dtype=torch.bool, device=users.device)]
    neg = negatives.reshape(-1)
    tu.append(users.repeat_interleave(N))
    tj.append(neg)
    tc.append(neg_weight / N * (w3 + w4 * bu.repeat_interleave(N) * beta_item[neg]))
    ty.append(torch.zeros(neg.numel(), dtype=torch.bool, device=users.device))
    if kappa > 0 and not padded:
        K = ii_neighbors.shape[1]
        tu.append(users.repeat_interleave(K))
        tj.append(ii_neighbors[items].reshape(-1))
        tc.append(kappa * ii_weights[items].reshape(-1))
        ty.append(torch.ones(users.numel() * K, dtype=torch.bool, device=users.device))
    elif kappa > 0:
        K = ii_neighbors.shape[1]
        nb = ii_neighbors[items]                      # (B, K)
        valid = nb >= 0
        tu.append(users.repeat_interleave(K)[valid.reshape(-1)])
        tj.append(nb[valid])
        tc.append(kappa * ii_weights[items][valid])
        ty.append(torch.ones(int(valid.sum()), dtype=torch.bool, device=users.device))
    return torch.cat(tu), torch.cat(tj), torch.cat(tc), torch.cat(ty)


def ultragcn_loss(Pt, T, users, items, negatives, beta_user, beta_item, *, w1, w2, w3, w4,
                  neg_weight, kappa=0.0, ii_neighbors=None, ii_weights=None,
                  Pf=None, W=None, b=None, content=None, gamma_emb=0.0, gamma_W=0.0):
    """UltraGCN loss of DESIGN.md section 2 for one batch (sums over the batch).

    content: None -> ID-only branch, s = <Pt_u, T_j> (Pf, W, b unused);
             a tensor (I, d) -> x_j = content[j];
             a callable (u, j) -> x (n, d) per term (the mask model's h_uj).
    With content, s = <Pt_u, T_j> + <Pf_u, W x + b>.
    L2: gamma_emb (|Pt|^2 + |Pf|^2 + |T|^2) + gamma_W (|W|^2 + |b|^2) over the full tables
    (ID-only: Pt, T only).  gamma_emb = gamma_W = 0 gives the data part alone."""
    tu, tj, tc, ty = build_terms(users, items, negatives, beta_user, beta_item, w1, w2, w3,
                                 w4, neg_weight, kappa, ii_neighbors, ii_weights)
    s = (Pt[tu] * T[tj]).sum(1)
    if content is not None:
        x = content(tu, tj) if callable(content) else content[tj]
        s = s + (Pf[tu] * (x @ W.T + b)).sum(1)
    loss = (tc * softplus(torch.where(ty, -s, s))).sum()
    if content is None:                               # ID-only: no Pf, W, b at all
        Pf = W = b = None
    if gamma_emb:
        loss = loss + gamma_emb * sum((t * t).sum() for t in (Pt, Pf, T) if t is not None)
    if gamma_W and W is not None:
        loss = loss + gamma_W * ((W * W).sum() + (b * b).sum())
    return loss


# ----------------------------------------------------------------------------- the mask step

def gate(z):
    """mu = clip(z, 0, 1); d mu / d z = 1 only where 0 < z < 1 (0 at and beyond the bounds).
    The clipped value enters as a constant, so torch.clamp's boundary gradient never leaks."""
    open_ = ((z > 0) & (z < 1)).to(z.dtype)
    return z * open_ + torch.clamp(z, 0.0, 1.0).detach() * (1.0 - open_)


def attention_weights(P, prm, tu, tj):
    """(alpha_Phi, alpha_Psi) per term; (1, 0) without attention."""
    if not P["attention"]:
        n = tu.numel()
        return torch.ones(n), torch.zeros(n)
    xu = torch.cat([P["Pt"][tu], P["Pf"][tu]], 1)
    xi = torch.cat([P["T"][tj], P["features"][tj]], 1)
    out = []
    for k in (1, 2):
        hid = torch.relu(xu @ prm[f"mlp{k}_w1u"].T + xi @ prm[f"mlp{k}_w1i"].T + prm[f"mlp{k}_b1"])
        out.append(torch.sigmoid(hid @ prm[f"mlp{k}_w2"] + prm[f"mlp{k}_b2"]))
    return out[0], out[1]


def env_loss(P, prm, mu, e):
    """L^e: the data part of the UltraGCN loss of environment e's batch with x = h (Eq. 13)."""
    lo, hi = int(P["env_offsets"][e]), int(P["env_offsets"][e + 1])
    f = P["features"]

    def h(tu, tj):
        a_phi, a_psi = attention_weights(P, prm, tu, tj)
        fj = f[tj]
        return a_phi[:, None] * (mu * fj) + a_psi[:, None] * ((1.0 - mu) * fj)

    sc = P["scalars"]
    return ultragcn_loss(P["Pt"], P["T"], P["batch_users"][lo:hi], P["batch_items"][lo:hi],
                         P["batch_negatives"][lo:hi], P["beta_user"], P["beta_item"],
                         w1=sc["w1"], w2=sc["w2"], w3=sc["w3"], w4=sc["w4"],
                         neg_weight=sc["neg_weight"], kappa=sc["kappa"],
                         ii_neighbors=P["ii_neighbors"], ii_weights=P["ii_weights"],
                         Pf=P["Pf"], W=prm["W"], b=prm["b"], content=h)


def objective(P, m, prm):
    """loss_env, L_ERM, G, V, L_IRM as graph-carrying tensors (prm["W"] must require grad)."""
    E = P["scalars"]["E"]
    losses, grads = [], []
    for e in range(E):
        mu = gate(m + P["noise"][e])
        L = env_loss(P, prm, mu, e)
        (G,) = torch.autograd.grad(L, prm["W"], create_graph=True, allow_unused=True)
        losses.append(L)
        grads.append(torch.zeros_like(prm["W"]) if G is None else G)
    loss_env = torch.stack(losses)
    G = torch.stack(grads)
    V = ((G - G.mean(0)) ** 2).mean(0)
    L_IRM = ((V * m[None, :]) ** 2).sum()          # noise-free, unclipped m (Eq. 11)
    return dict(loss_env=loss_env, L_ERM=loss_env.mean(), G=G, V=V, L_IRM=L_IRM)


def _grad(y, x):
    (g,) = torch.autograd.grad(y, x, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


RUNNING_DECAY = 0.9  # pareto_normalize = running: the running mean's decay (math/mask.h)


def pareto_scales(normalize, gE, gI, L_ERM, L_IRM, state=(0.0, 0.0, 0)):
    """The divisors (sE, sI) of g_E and g_I before Eq. 17, from the stage's normalisation state
    (rms_E, rms_I, steps) before this step: none 1; l2 the norms; loss the losses; initial the
    state's RMS (this step's when the state has none: the first step of a stage); running the
    bias-corrected running mean of the RMS. A zero or non-finite divisor is 1."""
    d = max(gE.numel(), 1)
    rE, rI = float(gE.norm()) / math.sqrt(d), float(gI.norm()) / math.sqrt(d)
    ref_E, ref_I, steps = float(state[0]), float(state[1]), int(state[2])
    if normalize == "none":
        sE, sI = 1.0, 1.0
    elif normalize == "l2":
        sE, sI = float(gE.norm()), float(gI.norm())
    elif normalize == "loss":
        sE, sI = L_ERM, L_IRM
    elif normalize == "initial":
        sE = ref_E if ref_E > 0 else rE
        sI = ref_I if ref_I > 0 else rI
    elif normalize == "running":
        a, steps = RUNNING_DECAY, steps + 1
        sE = (a * ref_E + (1 - a) * rE) / (1 - a ** steps)
        sI = (a * ref_I + (1 - a) * rI) / (1 - a ** steps)
    else:
        raise DumpError("pareto_normalize must be none|l2|loss|initial|running, got "
                        f"{normalize!r}")
    ok = lambda s: s > 0 and math.isfinite(s)
    return (sE if ok(sE) else 1.0), (sI if ok(sI) else 1.0)


def pareto_weight(gE, gI, normalize, L_ERM, L_IRM, state=(0.0, 0.0, 0)):
    """Normalised (gE, gI) and the clipped min-norm w_ERM (Eq. 17-18)."""
    sE, sI = pareto_scales(normalize, gE, gI, L_ERM, L_IRM, state)
    gE, gI = gE / sE, gI / sI
    diff = gE - gI
    den = float(diff @ diff)
    w = 0.5 if den < 1e-12 else min(max(float((gI - gE) @ gI) / den, 0.0), 1.0)
    return gE, gI, w


def param_names(P):
    return ["W", "b"] + (MLP_INPUTS if P["attention"] else [])


def leaf_params(P, overrides=None):
    prm = {k: P[k].clone().requires_grad_(True) for k in param_names(P)}
    for k, v in (overrides or {}).items():
        prm[k] = v.clone().requires_grad_(True)
    return prm


def J_value(P, m, prm, w):
    out = objective(P, m, prm)
    gw = P["scalars"]["gamma_w"]
    return (w * out["L_ERM"] + (1 - w) * out["L_IRM"]
            + gw * ((prm["W"] ** 2).sum() + (prm["b"] ** 2).sum()))


def mask_step_problem(P):
    """All outputs of one mask step (float64 numpy arrays keyed as in the dump)."""
    sc = P["scalars"]
    if sc["mask_optimizer"] != "sgd":
        raise DumpError(f"mask_optimizer {sc['mask_optimizer']!r}: the reference handles sgd only")
    m = P["mask"].clone().requires_grad_(True)
    prm = leaf_params(P)
    out = objective(P, m, prm)
    gE, gI = _grad(out["L_ERM"], m), _grad(out["L_IRM"], m)
    L_ERM, L_IRM = float(out["L_ERM"]), float(out["L_IRM"])
    state = (sc.get("pareto_rms_E", 0.0), sc.get("pareto_rms_I", 0.0), sc.get("pareto_steps", 0))
    nE, nI, w = pareto_weight(gE.detach(), gI.detach(), sc["pareto_normalize"], L_ERM, L_IRM,
                              state)
    # The objective's weights (wE, wI): pareto (default) uses (w, 1 - w); the ablations of Table 3
    # fix them: erm (1, 0), irm (0, 1); InvRL's fixed weighting is (1, alpha).
    objective_name = sc.get("objective", "pareto")
    wE, wI = w, 1 - w
    if objective_name == "erm":
        wE, wI = 1.0, 0.0
    elif objective_name == "irm":
        wE, wI = 0.0, 1.0
    elif objective_name == "fixed":
        if "alpha" not in sc:
            raise DumpError("objective fixed needs the scalar alpha")
        wE, wI = 1.0, float(sc["alpha"])
    elif objective_name != "pareto":
        raise DumpError(f"objective must be pareto|erm|irm|fixed, got {objective_name!r}")
    w = wE
    m0 = P["mask"]
    step = wE * nE + wI * nI + sc["lambda"] * (m0 - sc["c"])
    mask_new = torch.clamp(m0 - sc["s"] * step, 0.0, 1.0)
    J = (wE * out["L_ERM"] + wI * out["L_IRM"]
         + sc["gamma_w"] * ((prm["W"] ** 2).sum() + (prm["b"] ** 2).sum()))
    res = {k: out[k].detach() for k in ("loss_env", "G", "V")}
    res.update(L_ERM=out["L_ERM"].detach().reshape(1), L_IRM=out["L_IRM"].detach().reshape(1),
               g_E=gE.detach(), g_I=gI.detach(), w_ERM=torch.tensor([w]),
               w_IRM=torch.tensor([wI]), mask_new=mask_new)
    for k in param_names(P):
        res["grad_" + k] = _grad(J, prm[k]).detach()
    return {k: v.numpy().astype(np.float64) for k, v in res.items()}


# ----------------------------------------------------------------------------- dump I/O

def load_dump(dump_dir):
    """(problem dict of float64/int64 tensors + scalars, expected outputs as numpy, index)."""
    path = os.path.join(dump_dir, "index.json")
    if not os.path.isfile(path):
        raise DumpError(f"{path}: no index.json")
    with open(path) as fh:
        index = json.load(fh)
    for sec in ("scalars", "inputs", "outputs"):
        if sec not in index:
            raise DumpError(f"index.json: missing section {sec!r}")
    sc = dict(index["scalars"])
    missing = [k for k in SCALAR_KEYS if k not in sc]
    if missing:
        raise DumpError(f"index.json: missing scalar(s) {', '.join(missing)}")
    for k in ("E", "N", "K", "D", "d", "H"):
        sc[k] = int(sc[k])
    for k in ("w1", "w2", "w3", "w4", "neg_weight", "kappa", "sigma", "lambda", "c", "s",
              "gamma_w"):
        sc[k] = float(sc[k])
    if not isinstance(sc["attention"], bool):
        raise DumpError(f"scalar attention must be true/false, got {sc['attention']!r}")

    def read(section, name):
        ent = index[section].get(name)
        if ent is None:
            raise DumpError(f"index.json: {section} lacks array {name!r}")
        fpath = os.path.join(dump_dir, ent["file"])
        if not os.path.isfile(fpath):
            raise DumpError(f"{section} {name}: file {fpath} missing")
        arr = np.load(fpath, allow_pickle=False)
        if list(arr.shape) != list(ent["shape"]):
            raise DumpError(f"{section} {name}: file shape {list(arr.shape)} != index "
                            f"shape {ent['shape']}")
        if str(arr.dtype) != ent["dtype"]:
            raise DumpError(f"{section} {name}: file dtype {arr.dtype} != index {ent['dtype']}")
        return arr

    need = INPUT_NAMES + (MLP_INPUTS if sc["attention"] else [])
    P = {"scalars": sc, "attention": sc["attention"]}
    for name in need:
        arr = read("inputs", name)
        t = torch.from_numpy(np.ascontiguousarray(arr))
        P[name] = t.long() if arr.dtype.kind in "iu" else t.double()
    check_shapes(P)
    outputs = {name: read("outputs", name) for name in index["outputs"]}
    return P, outputs, index


def check_shapes(P):
    sc = P["scalars"]
    E, N, K, D, d, H = (sc[k] for k in ("E", "N", "K", "D", "d", "H"))
    U, I = P["Pt"].shape[0], P["T"].shape[0]
    rows = P["batch_users"].shape[0]
    want = {"Pt": (U, D), "Pf": (U, D), "T": (I, D), "features": (I, d), "beta_user": (U,),
            "beta_item": (I,), "ii_neighbors": (I, K), "ii_weights": (I, K), "W": (D, d),
            "b": (D,), "mask": (d,), "env_offsets": (E + 1,), "batch_users": (rows,),
            "batch_items": (rows,), "batch_negatives": (rows, N), "noise": (E, d)}
    if P["attention"]:
        for k in (1, 2):
            want.update({f"mlp{k}_w1u": (H, 2 * D), f"mlp{k}_w1i": (H, D + d),
                         f"mlp{k}_b1": (H,), f"mlp{k}_w2": (H,), f"mlp{k}_b2": (1,)})
    for name, shape in want.items():
        if tuple(P[name].shape) != shape:
            raise DumpError(f"input {name}: shape {tuple(P[name].shape)}, expected {shape}")
    off = P["env_offsets"]
    if int(off[0]) != 0 or int(off[-1]) != rows or bool((off[1:] < off[:-1]).any()):
        raise DumpError(f"env_offsets {off.tolist()} do not partition {rows} batch rows")


def expected_outputs(P):
    base = ["loss_env", "L_ERM", "G", "V", "L_IRM", "g_E", "g_I", "w_ERM", "grad_W", "grad_b",
            "mask_new"]
    return base + (["grad_" + k for k in MLP_INPUTS] if P["attention"] else [])


def mask_step(dump_dir):
    """Recompute every output of a debug-step dump; dict name -> float64 numpy array."""
    P, _, _ = load_dump(dump_dir)
    return mask_step_problem(P)


def rel_errors(a, b, floor_frac=1e-6):
    """(max elementwise relative error, relative L2 error) of a against reference b:
    |a - b| / max(|b|, floor_frac * max|b|, tiny) elementwise, |a - b|_2 / |b|_2."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    amax = float(np.abs(b).max()) if b.size else 0.0
    floor = np.maximum(np.abs(b), max(floor_frac * amax, TINY))
    diff = np.abs(a - b)
    mx = float((diff / floor).max()) if b.size else 0.0
    l2 = float(np.linalg.norm(diff) / max(float(np.linalg.norm(b)), TINY))
    return mx, l2


def compare(dump_dir, rtol=1e-4, out=sys.stdout, floor_frac=1e-6, measure="max"):
    """Print one line per output; return (ok, list of failure messages).
    measure: "max" gates on the largest elementwise relative error (with the floor), "l2" on the
    relative L2 error of each array (the per-tensor measure for float32 dumps, whose sums with
    cancellation leave near-zero entries with large elementwise relative errors)."""
    P, got, _ = load_dump(dump_dir)
    ref = mask_step_problem(P)
    fails = []
    for name in expected_outputs(P):
        if name not in got:
            fails.append(f"{name}: expected output missing from the dump")
    print(f"{'array':<16} {'shape':<14} {'max_rel_err':>12} {'rel_l2_err':>12}", file=out)
    for name, arr in got.items():
        if name not in ref:
            fails.append(f"{name}: output unknown to the reference (cannot be checked)")
            continue
        if arr.shape != ref[name].shape:
            fails.append(f"{name}: shape {list(arr.shape)}, reference {list(ref[name].shape)}")
            continue
        mx, l2 = rel_errors(arr, ref[name], floor_frac)
        err = mx if measure == "max" else l2
        bad = not (err < rtol)
        print(f"{name:<16} {str(list(arr.shape)):<14} {mx:12.3e} {l2:12.3e}"
              f"{'  FAIL' if bad else ''}", file=out)
        if bad:
            fails.append(f"{name}: {'max' if measure == 'max' else 'L2'} relative error "
                         f"{err:.3e} >= rtol {rtol:g}")
    return not fails, fails


# ----------------------------------------------------------------------------- self-test

def write_dump(dump_dir, scalars, inputs, outputs):
    os.makedirs(dump_dir, exist_ok=True)
    index = {"scalars": scalars, "inputs": {}, "outputs": {}}
    for sec, arrays in (("inputs", inputs), ("outputs", outputs)):
        for name, arr in arrays.items():
            arr = np.asarray(arr)
            arr = arr.astype(np.int64 if arr.dtype.kind in "iu" else np.float32)
            np.save(os.path.join(dump_dir, name + ".npy"), arr)
            index[sec][name] = {"file": name + ".npy", "shape": list(arr.shape),
                                "dtype": str(arr.dtype)}
    with open(os.path.join(dump_dir, "index.json"), "w") as fh:
        json.dump(index, fh, indent=1)


def random_problem(seed, attention, normalize, kappa):
    g = np.random.default_rng(seed)
    U, I, D, d, H, E, N, K = 6, 9, 3, 5, 4, 3, 2, 2
    rows = [3, 2, 4]
    feats = g.normal(size=(I, d))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    deg_u, deg_i = g.integers(1, 6, U), g.integers(1, 6, I)
    nb = np.stack([g.choice(I, K, replace=False) for _ in range(I)])
    nb[0, 1] = -1                                           # one padded neighbour slot
    mask = g.uniform(0.2, 0.8, d)
    mask[0], mask[1] = 0.0, 1.0                             # gates closed in some environments
    noise = g.normal(0, 0.05, (E, d))
    noise[:, 0] = [-0.03, 0.04, -0.05]                      # keep every z away from the kinks
    noise[:, 1] = [0.03, -0.04, 0.05]
    inputs = {"Pt": g.normal(0, 0.5, (U, D)), "Pf": g.normal(0, 0.5, (U, D)),
              "T": g.normal(0, 0.5, (I, D)), "features": feats,
              "beta_user": np.sqrt(deg_u + 1) / deg_u, "beta_item": 1 / np.sqrt(deg_i + 1),
              "ii_neighbors": nb, "ii_weights": g.uniform(0.1, 1, (I, K)),
              "W": g.normal(0, 0.7, (D, d)), "b": g.normal(0, 0.3, D), "mask": mask,
              "env_offsets": np.cumsum([0] + rows), "batch_users": g.integers(0, U, sum(rows)),
              "batch_items": g.integers(0, I, sum(rows)),
              "batch_negatives": g.integers(0, I, (sum(rows), N)), "noise": noise}
    if attention:
        for k in (1, 2):
            inputs.update({f"mlp{k}_w1u": g.normal(0, 0.5, (H, 2 * D)),
                           f"mlp{k}_w1i": g.normal(0, 0.5, (H, D + d)),
                           f"mlp{k}_b1": g.normal(0, 0.3, H), f"mlp{k}_w2": g.normal(0, 0.8, H),
                           f"mlp{k}_b2": g.normal(0, 0.3, 1)})
    scalars = dict(E=E, N=N, K=K, D=D, d=d, H=H, w1=1.0, w2=0.7, w3=1.0, w4=0.5,
                   neg_weight=3.0, kappa=kappa, sigma=0.05, c=0.5, s=0.3,
                   gamma_w=0.01, attention=attention, pareto_normalize=normalize,
                   mask_optimizer="sgd", **{"lambda": 0.1})
    return scalars, inputs


def fd_check(P, ref, h=1e-5, tol=1e-6):
    """Central finite differences (float64) of L_ERM, L_IRM in m; L^e and J in the params."""
    fails = []

    def check(name, fd, ad):
        scale = max(float(np.abs(ad).max()), 1e-12)
        err = float(np.abs(fd - ad).max()) / scale
        print(f"  fd {name:<12} max|fd-ad|/max|ad| = {err:.2e}")
        if not err < tol:
            fails.append(f"finite differences disagree for {name}: {err:.2e}")

    m0 = P["mask"]
    fdE, fdI = np.zeros(m0.numel()), np.zeros(m0.numel())
    for j in range(m0.numel()):
        vals = []
        for sgn in (1, -1):
            m = m0.clone()
            m[j] += sgn * h
            o = objective(P, m, leaf_params(P))
            vals.append((float(o["L_ERM"]), float(o["L_IRM"])))
        fdE[j] = (vals[0][0] - vals[1][0]) / (2 * h)
        fdI[j] = (vals[0][1] - vals[1][1]) / (2 * h)
    check("g_E", fdE, ref["g_E"])
    check("g_I", fdI, ref["g_I"])
    w = float(ref["w_ERM"][0])
    fdG = np.zeros_like(ref["G"])
    for name in param_names(P):
        base = P[name]
        fd = np.zeros(base.numel())
        for idx in range(base.numel()):
            vals = []
            for sgn in (1, -1):
                t = base.clone().reshape(-1)
                t[idx] += sgn * h
                prm = leaf_params(P, {name: t.reshape(base.shape)})
                if name == "W":
                    o = objective(P, m0, prm)
                    vals.append((float(J_value(P, m0, prm, w)), o["loss_env"].detach().numpy()))
                else:
                    vals.append((float(J_value(P, m0, prm, w)), None))
            fd[idx] = (vals[0][0] - vals[1][0]) / (2 * h)
            if name == "W":
                fdG.reshape(ref["G"].shape[0], -1)[:, idx] = (vals[0][1] - vals[1][1]) / (2 * h)
        check("grad_" + name, fd.reshape(base.shape), ref["grad_" + name])
    check("G", fdG, ref["G"])
    return fails


def loop_loss(Pt, Pf, T, W, b, feats, users, items, negs, bu, bi, nbr, nbw, sc, ge, gw):
    """ultragcn_loss written as plain Python loops (for the self-test)."""
    import math

    def sp(x):
        return max(x, 0.0) + math.log1p(math.exp(-abs(x)))

    def score(u, j):
        s = float(Pt[u] @ T[j])
        return s if feats is None else s + float(Pf[u] @ (W @ feats[j] + b))

    L, N = 0.0, negs.shape[1]
    for r in range(len(users)):
        u, i = users[r], items[r]
        L += (sc["w1"] + sc["w2"] * bu[u] * bi[i]) * sp(-score(u, i))
        for j in negs[r]:
            L += sc["neg_weight"] / N * (sc["w3"] + sc["w4"] * bu[u] * bi[j]) * sp(score(u, j))
        for k in range(nbr.shape[1]):
            if sc["kappa"] > 0 and nbr[i, k] >= 0:
                L += sc["kappa"] * nbw[i, k] * sp(-score(u, nbr[i, k]))
    L += ge * ((Pt ** 2).sum() + (T ** 2).sum() + (0 if feats is None else (Pf ** 2).sum()))
    return L + (0 if feats is None else gw * ((W ** 2).sum() + (b ** 2).sum()))


def selftest():
    fails = []
    z = torch.tensor([-0.1, 0.0, 0.5, 1.0, 1.2], requires_grad=True)
    mu = gate(z)
    (gz,) = torch.autograd.grad(mu.sum(), z)
    if mu.tolist() != [0.0, 0.0, 0.5, 1.0, 1.0] or gz.tolist() != [0.0, 0.0, 1.0, 0.0, 0.0]:
        fails.append(f"gate: value {mu.tolist()} grad {gz.tolist()}")
    print(f"gate value {mu.tolist()} grad {gz.tolist()}")

    # The unmasked neighbour path (epoch timing) builds the same terms as the masked one when the
    # table has no padding.
    g = torch.Generator().manual_seed(3)
    args = (torch.tensor([0, 2, 1]), torch.tensor([1, 0, 3]), torch.randint(0, 4, (3, 2), generator=g),
            torch.rand(3, generator=g), torch.rand(4, generator=g), 0.1, 1.0, 0.2, 0.9, 3.0, 0.5,
            torch.randint(0, 4, (4, 2), generator=g), torch.rand(4, 2, generator=g))
    same = all(torch.equal(x, y) for x, y in zip(build_terms(*args), build_terms(*args, padded=False)))
    if not same:
        fails.append("build_terms: the unmasked neighbour path differs from the masked one")
    print(f"build_terms unmasked path equal: {same}")

    for gE, gI, want in (([1.0, 0.0], [0.0, 2.0], 0.8), ([1.0, 2.0], [1.0, 2.0], 0.5),
                         ([3.0, 0.0], [0.0, 1.0], 0.1), ([1.0, 0.0], [2.0, 0.0], 1.0)):
        w = pareto_weight(torch.tensor(gE), torch.tensor(gI), "none", 1.0, 1.0)[2]
        if abs(w - want) > 1e-15:
            fails.append(f"pareto_weight({gE}, {gI}) = {w}, expected {want}")
    print("pareto_weight: interior, 1e-12 rule and clipping checked")

    sc, inp = random_problem(7, True, "none", 0.4)
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in inp.items()}
    t = {k: (v.long() if v.dtype in (torch.int64, torch.int32) else v.double())
         for k, v in t.items()}
    for feats, ge in ((None, 0.01), (t["features"], 0.02)):
        kw = {k: sc[k] for k in ("w1", "w2", "w3", "w4", "neg_weight", "kappa")}
        Lt = float(ultragcn_loss(t["Pt"], t["T"], t["batch_users"], t["batch_items"],
                                 t["batch_negatives"], t["beta_user"], t["beta_item"],
                                 ii_neighbors=t["ii_neighbors"], ii_weights=t["ii_weights"],
                                 Pf=t["Pf"], W=t["W"], b=t["b"], content=feats,
                                 gamma_emb=ge, gamma_W=0.03, **kw))
        Ll = loop_loss(*(np.asarray(inp[k], np.float64) for k in ("Pt", "Pf", "T", "W", "b")),
                       None if feats is None else np.asarray(inp["features"], np.float64),
                       inp["batch_users"], inp["batch_items"], inp["batch_negatives"],
                       inp["beta_user"], inp["beta_item"], inp["ii_neighbors"],
                       inp["ii_weights"], sc, ge, 0.03)
        err = abs(Lt - Ll) / abs(Ll)
        print(f"ultragcn_loss ({'ID-only' if feats is None else 'content'}) {Lt:.10g} "
              f"vs loops {Ll:.10g}: rel err {err:.1e}")
        if not err < 1e-12:
            fails.append(f"ultragcn_loss vs loops: {err:.1e}")

    cases = [(11, True, "none", 0.4), (12, False, "l2", 0.0), (13, True, "loss", 0.4),
             (14, True, "l2", 0.0)]
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as null:
        for n, (seed, att, norm, kappa) in enumerate(cases):
            print(f"case {n}: attention={att} pareto_normalize={norm} kappa={kappa}")
            sc, inp = random_problem(seed, att, norm, kappa)
            d0 = os.path.join(tmp, f"case{n}")
            write_dump(d0, sc, inp, {})
            P, _, _ = load_dump(d0)                     # float32 inputs, as the C++ dump has
            ref = mask_step_problem(P)
            print(f"  L_ERM {ref['L_ERM'][0]:.6g} L_IRM {ref['L_IRM'][0]:.6g} "
                  f"w_ERM {ref['w_ERM'][0]:.6g}")
            fails += fd_check(P, ref)
            outs = {k: v for k, v in ref.items() if k != "w_IRM"}
            write_dump(d0, sc, inp, outs)
            ok, msg = compare(d0, 1e-4, out=null)
            if not ok:
                fails.append(f"case {n}: compare fails on its own dump: {msg}")
            for name in outs:                           # every output, perturbed, must fail
                bad = dict(outs)
                arr = bad[name].astype(np.float64).copy()
                k = int(np.abs(arr).argmax())
                arr.reshape(-1)[k] = arr.reshape(-1)[k] * (1 + 1e-3) + (arr.reshape(-1)[k] == 0)
                bad[name] = arr
                dp = os.path.join(tmp, f"bad{n}_{name}")
                write_dump(dp, sc, inp, bad)
                ok, msg = compare(dp, 1e-4, out=null)
                if ok or not any(m.startswith(name + ":") for m in msg):
                    fails.append(f"case {n}: perturbed {name} not caught ({msg})")
            print(f"  compare: own dump passes; each of {len(outs)} perturbed outputs fails")
        # a missing output, CLI exit codes and a missing scalar
        d0 = os.path.join(tmp, "case0")
        with open(os.path.join(d0, "index.json")) as fh:
            idx = json.load(fh)
        del idx["outputs"]["grad_mlp2_b1"]
        dm = os.path.join(tmp, "missing_out")
        os.makedirs(dm)
        with open(os.path.join(dm, "index.json"), "w") as fh:
            json.dump(idx, fh)
        for name in os.listdir(d0):
            if name.endswith(".npy"):
                os.link(os.path.join(d0, name), os.path.join(dm, name))
        ok, msg = compare(dm, 1e-4, out=null)
        print("missing output:", msg)
        if ok or not any(x.startswith("grad_mlp2_b1:") for x in msg):
            fails.append("a missing output array is not reported")
        cli = [sys.executable, os.path.abspath(__file__), "compare"]
        rc_ok = subprocess.run(cli + [d0], capture_output=True).returncode
        rc_bad = subprocess.run(cli + [os.path.join(tmp, "bad0_V")], capture_output=True)
        os.remove(os.path.join(tmp, "bad0_G", "G.npy"))
        rc_miss = subprocess.run(cli + [os.path.join(tmp, "bad0_G")], capture_output=True)
        with open(os.path.join(d0, "index.json")) as fh:
            idx = json.load(fh)
        del idx["outputs"]["grad_b"]
        idx["scalars"].pop("kappa")
        with open(os.path.join(d0, "index.json"), "w") as fh:
            json.dump(idx, fh)
        rc_key = subprocess.run(cli + [d0], capture_output=True)
        print(f"CLI exit codes: good {rc_ok}, perturbed V {rc_bad.returncode}, missing file "
              f"{rc_miss.returncode}, missing scalar {rc_key.returncode}")
        print("  perturbed:", rc_bad.stdout.decode().strip().splitlines()[-1])
        print("  missing file:", rc_miss.stdout.decode().strip().splitlines()[-1])
        print("  missing scalar:", rc_key.stdout.decode().strip().splitlines()[-1])
        if rc_ok != 0 or rc_bad.returncode == 0 or rc_miss.returncode == 0 \
                or b"kappa" not in rc_key.stdout or rc_key.returncode == 0:
            fails.append("CLI exit codes wrong")
    for f in fails:
        print("SELFTEST FAIL:", f)
    print("selftest", "FAILED" if fails else "passed")
    return 1 if fails else 0


# ----------------------------------------------------------------------------- epoch timing

def read_lists(path):
    """LightGCN text: `user item item ...` per line -> (users, items) int64 arrays."""
    us, its = [], []
    with open(path) as f:
        for line in f:
            ids = line.split()
            if len(ids) > 1:
                us.extend([int(ids[0])] * (len(ids) - 1))
                its.extend(int(x) for x in ids[1:])
    return np.asarray(us, dtype=np.int64), np.asarray(its, dtype=np.int64)


def ultragcn_graph(users, items, n_users, n_items, K, device="cpu"):
    """beta_u, beta_i and the top-K item neighbours with the UltraGCN code's omega
    (G = R^T R, g_i = sum_j G_ij, omega_ij = G_ij / g_i * sqrt((g_i + 1) / (g_j + 1)),
    diagonal kept), dense; G by numpy, or by torch on `device` when that is a GPU (the
    co-occurrence product at the paper's sizes is 2 TFLOP)."""
    du = np.bincount(users, minlength=n_users).astype(np.float64)
    di = np.bincount(items, minlength=n_items).astype(np.float64)
    beta_u = np.where(du > 0, np.sqrt(du + 1) / np.maximum(du, 1), 0.0)
    beta_i = 1.0 / np.sqrt(di + 1)
    if str(device).startswith("cuda"):
        Rt = torch.zeros((n_users, n_items), dtype=torch.float32, device=device)
        Rt[torch.tensor(users, device=device), torch.tensor(items, device=device)] = 1.0
        G = (Rt.T @ Rt).double().cpu().numpy()  # counts below 2^24: exact in float32
        del Rt
    else:
        R = np.zeros((n_users, n_items), dtype=np.float32)
        R[users, items] = 1.0
        G = (R.T @ R).astype(np.float64)
    g = G.sum(1)
    omega = G / np.maximum(g, 1e-300)[:, None] * np.sqrt((g[:, None] + 1) / (g[None, :] + 1))
    omega[g == 0] = 0.0
    nbr = np.argsort(-omega, axis=1, kind="stable")[:, :K]
    return beta_u, beta_i, nbr, np.take_along_axis(omega, nbr, 1)


def epoch(a):
    """One epoch (or --steps steps) of the UltraGCN objective in float32 PyTorch, the way a
    PyTorch user writes it: shuffled positives, uniform negatives, the loss of ultragcn_loss()
    with full-table L2, dense Adam. With --feat-dim d > 0 the content branch too (random
    features F (n_items, d); each step X = F W^T + b once, s += <Pf_u, X_j>, L2 on W, b), as the
    final model and UltraGCN with features train. --device cuda runs it on the GPU (the timing
    ends with a synchronisation). Prints one JSON line with the training seconds."""
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    t_setup = time.time()
    users, items = read_lists(os.path.join(a.data, "train.txt"))
    n_users = int(users.max()) + 1
    n_items = int(items.max()) + 1
    for name in ("val.txt", "test.txt"):
        p = os.path.join(a.data, name)
        if os.path.exists(p):
            u2, i2 = read_lists(p)
            if len(u2):
                n_users, n_items = max(n_users, int(u2.max()) + 1), max(n_items, int(i2.max()) + 1)
    bu, bi, nbr, nbw = ultragcn_graph(users, items, n_users, n_items, a.ii_neighbors, dev)
    f32 = torch.float32
    beta_user = torch.tensor(bu, dtype=f32, device=dev)
    beta_item = torch.tensor(bi, dtype=f32, device=dev)
    ii_n, ii_w = torch.tensor(nbr, device=dev), torch.tensor(nbw, dtype=f32, device=dev)

    def param(*shape, std=a.init_std):
        return torch.nn.Parameter(torch.randn(*shape, dtype=f32, device=dev) * std)

    Pt, T = param(n_users, a.dim), param(n_items, a.dim)
    params = [Pt, T]
    if a.feat_dim > 0:
        feats = torch.randn(n_items, a.feat_dim, dtype=f32, device=dev)
        Pf, W = param(n_users, a.dim), param(a.dim, a.feat_dim)
        b = torch.nn.Parameter(torch.zeros(a.dim, dtype=f32, device=dev))
        params += [Pf, W, b]
    opt = torch.optim.Adam(params, lr=a.lr)
    pu, pi = torch.tensor(users, device=dev), torch.tensor(items, device=dev)
    P = len(users)
    full_steps = (P + a.batch - 1) // a.batch
    steps = min(full_steps, a.steps) if a.steps else full_steps
    setup_seconds = time.time() - t_setup
    order = torch.randperm(P, device=dev)
    emb = [Pt, T] + ([Pf] if a.feat_dim > 0 else [])
    total = torch.zeros((), dtype=torch.float64, device=dev)  # read once, at the end
    t0 = time.time()
    # The first --warmup steps are not timed (allocator growth, cuBLAS and kernel selection).
    for s in range(a.warmup + steps):
        if s == a.warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            total.zero_()
            t0 = time.time()
        first = (s % full_steps) * a.batch
        idx = order[first:first + a.batch]
        bu_, bi_ = pu[idx], pi[idx]
        neg = torch.randint(0, n_items, (len(idx), a.negatives), device=dev)
        opt.zero_grad()
        tu, tj, tc, ty = build_terms(bu_, bi_, neg, beta_user, beta_item, a.w1, a.w2, a.w3, a.w4,
                                     a.neg_weight, a.kappa, ii_n, ii_w, padded=False)
        sc = (Pt[tu] * T[tj]).sum(1)
        if a.feat_dim > 0:
            X = feats @ W.T + b                       # every item once per step
            sc = sc + (Pf[tu] * X[tj]).sum(1)
        loss = (tc * softplus(torch.where(ty, -sc, sc))).sum()
        loss = loss + a.gamma_emb * sum((t * t).sum() for t in emb)
        if a.feat_dim > 0:
            loss = loss + a.gamma_w * ((W * W).sum() + (b * b).sum())
        loss.backward()
        opt.step()
        total += loss.detach().double()
    total = float(total)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.time() - t0
    print(json.dumps({"steps": steps, "steps_per_epoch": full_steps, "seconds": seconds,
                      "seconds_per_step": seconds / max(steps, 1),
                      "epoch_seconds_estimate": seconds / max(steps, 1) * full_steps,
                      "setup_seconds": setup_seconds, "mean_loss": total / max(steps, 1),
                      "threads": a.threads, "device": str(dev), "feat_dim": a.feat_dim}))
    return 0


def mask_epoch(a):
    """--steps mask-generation steps of PaInvRL in PyTorch on --device, timed after --warmup:
    the objective of objective() (each environment's L^e, its gradient G_e by autograd with
    create_graph, V, L_IRM), g_E and g_I by autograd, the Pareto weight (Eq. 17-18), dJ/dtheta by
    backward through G_e, Adam on the mask model and the clipped SGD step on the mask (Eq. 19),
    on a random problem of the given sizes (default: the paper's MovieLens sizes, 10
    environments of --env-pairs pairs, --batch per environment), in --dtype. The per-step
    batches and noise are drawn on the device. Prints one JSON line with the seconds per step
    and the epoch estimate (ceil(env_pairs / batch) steps), as bench_mask_step_gpu does."""
    torch.set_num_threads(a.threads)
    dev, dt = torch.device(a.device), getattr(torch, a.dtype)
    g = torch.Generator().manual_seed(a.seed)
    U, I, D, d, H = a.users, a.items, a.dim, a.feat_dim, a.hidden
    E, N, K, B = a.envs, a.negatives, a.ii_neighbors, a.batch

    def rn(*shape, std=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * std).to(dev, dt)

    def ru(*shape):
        return (0.1 + 0.9 * torch.rand(*shape, generator=g, dtype=torch.float64)).to(dev, dt)

    P = {"Pt": rn(U, D, std=0.1), "Pf": rn(U, D, std=0.1), "T": rn(I, D, std=0.1),
         "features": rn(I, d, std=1 / np.sqrt(d)), "beta_user": ru(U), "beta_item": ru(I),
         "ii_neighbors": torch.randint(0, I, (I, K), generator=g).to(dev),
         "ii_weights": ru(I, K), "env_offsets": [e * B for e in range(E + 1)],
         "attention": H > 0,
         "scalars": dict(E=E, w1=1e-7, w2=1.0, w3=1e-7, w4=1.0, neg_weight=300.0, kappa=1.0)}
    prm = {"W": rn(D, d, std=0.05), "b": rn(D, std=0.05)}
    if H > 0:
        for k in (1, 2):
            prm.update({f"mlp{k}_w1u": rn(H, 2 * D, std=0.05),
                        f"mlp{k}_w1i": rn(H, D + d, std=0.05),
                        f"mlp{k}_b1": rn(H, std=0.05), f"mlp{k}_w2": rn(H, std=0.05),
                        f"mlp{k}_b2": rn(1, std=0.05)})
    for v in prm.values():
        v.requires_grad_(True)
    opt = torch.optim.Adam(list(prm.values()), lr=a.lr)
    m = torch.full((d,), 0.5, dtype=dt, device=dev)
    gamma_w, lam, center, step_size = 1e-4, 0.1, 0.5, 0.01
    rows = E * B
    w_sum = torch.zeros((), dtype=torch.float64, device=dev)

    def step():
        nonlocal m
        P["batch_users"] = torch.randint(0, U, (rows,), device=dev)
        P["batch_items"] = torch.randint(0, I, (rows,), device=dev)
        P["batch_negatives"] = torch.randint(0, I, (rows, N), device=dev)
        P["noise"] = torch.randn(E, d, dtype=dt, device=dev) * a.sigma
        mr = m.clone().requires_grad_(True)
        out = objective(P, mr, prm)
        gE, gI = _grad(out["L_ERM"], mr), _grad(out["L_IRM"], mr)
        nE, nI, w = pareto_weight(gE.detach(), gI.detach(), "none", None, None)
        J = (w * out["L_ERM"] + (1 - w) * out["L_IRM"]
             + gamma_w * ((prm["W"] ** 2).sum() + (prm["b"] ** 2).sum()))
        opt.zero_grad()
        J.backward()
        opt.step()
        m = torch.clamp(m - step_size * (w * nE + (1 - w) * nI + lam * (m - center)), 0.0, 1.0)
        return w

    for _ in range(a.warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.time()
    for _ in range(a.steps):
        w_sum += step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.time() - t0
    per_step = seconds / max(a.steps, 1)
    steps_per_epoch = (a.env_pairs + B - 1) // B
    print(json.dumps({"steps": a.steps, "seconds_per_step": per_step,
                      "steps_per_epoch": steps_per_epoch,
                      "epoch_seconds_estimate": per_step * steps_per_epoch,
                      "mean_w_ERM": float(w_sum) / max(a.steps, 1), "dtype": a.dtype,
                      "device": str(dev), "envs": E, "batch": B, "dim": D, "feat_dim": d,
                      "hidden": H, "negatives": N, "ii_k": K,
                      "peak_gib": (torch.cuda.max_memory_allocated() / 2**30
                                   if dev.type == "cuda" else None)}))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="check a debug-step dump against the reference")
    c.add_argument("dump_dir")
    c.add_argument("--rtol", type=float, default=1e-4)
    c.add_argument("--floor", type=float, default=1e-6,
                   help="relative-error floor as a fraction of the array's max |ref|")
    c.add_argument("--measure", choices=["max", "l2"], default="max",
                   help="gate on the max elementwise or the per-array L2 relative error")
    sub.add_parser("selftest", help="finite-difference and compare() self-checks")
    e = sub.add_parser("epoch", help="time one epoch of the UltraGCN objective (float32)")
    e.add_argument("--data", required=True, help="dataset directory with train.txt")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: all)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU")
    e.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed ones")
    e.add_argument("--feat-dim", type=int, default=0,
                   help="content branch with this many random feature columns (0: ID only)")
    for name, default in [("dim", 128), ("negatives", 200), ("batch", 1024),
                          ("ii-neighbors", 10)]:
        e.add_argument("--" + name, type=int, default=default)
    for name, default in [("lr", 1e-3), ("init-std", 1e-3), ("w1", 1e-7), ("w2", 1.0),
                          ("w3", 1e-7), ("w4", 1.0), ("neg-weight", 200.0), ("kappa", 1e-3),
                          ("gamma-emb", 5e-5), ("gamma-w", 1e-4)]:
        e.add_argument("--" + name, type=float, default=default)
    me = sub.add_parser("mask-epoch", help="time mask-generation steps (autograd, any dtype)")
    me.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU")
    me.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    me.add_argument("--threads", type=int, default=1)
    me.add_argument("--seed", type=int, default=0)
    me.add_argument("--steps", type=int, default=5)
    me.add_argument("--warmup", type=int, default=2)
    for name, default in [("users", 55485), ("items", 5986), ("dim", 64), ("feat-dim", 2276),
                          ("hidden", 64), ("envs", 10), ("env-pairs", 123951), ("batch", 512),
                          ("negatives", 50), ("ii-neighbors", 10)]:
        me.add_argument("--" + name, type=int, default=default)
    me.add_argument("--lr", type=float, default=1e-3)
    me.add_argument("--sigma", type=float, default=0.01)
    a = ap.parse_args(argv)
    if a.cmd == "mask-epoch":
        return mask_epoch(a)
    if a.cmd == "selftest":
        return selftest()
    if a.cmd == "epoch":
        return epoch(a)
    try:
        ok, fails = compare(a.dump_dir, a.rtol, floor_frac=a.floor, measure=a.measure)
    except DumpError as exc:
        print(f"compare: FAIL: bad dump: {exc}")
        return 2
    for f in fails:
        print(f"compare: FAIL: {f}")
    print("compare: " + ("OK" if ok else f"FAILED ({len(fails)} problem(s))"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
