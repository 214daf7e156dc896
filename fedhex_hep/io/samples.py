"""Toy input samples: a NanoAOD-like Phi -> gamma omega signal grid and FEDHEX's 2D Gaussian toys.

All samples share one layout: one folder per mass point named ``<Name>_<value>_<Name>_<value>``
(``p`` for the decimal point, ``m`` for a minus sign, e.g. ``Phi_1870_omega_9p025``), holding
``nano_<i>.root`` files with a TTree ``Events``. Units: GeV.

Signal grid (``make_signal_grid``, ``fedhex-hep make-samples signal``)
    Branches of the reference analysis (see DESIGN.md): ``run``, ``luminosityBlock``, ``event``,
    ``genWeight``; ``nPhoton``, ``Photon_pt/eta/phi``; ``nTwoProng``,
    ``TwoProng_pt/eta/phi/mass/massPi0``; ``nGenPhi``, ``GenPhi_mass``; ``nGenOmega``,
    ``GenOmega_mass``; ``CBL_Region`` (int32), ``CBL_RecoPhi_mass``,
    ``CBL_RecoPhi_photonindex``, ``CBL_RecoPhi_twoprongindex`` (int32).
    Candidates are sorted by decreasing pt in each event (NanoAOD convention); the CBL indices
    point at the chosen photon / two-prong. ``CBL_Region``: 1 = signal region (a valid,
    isolated pair: indices always valid), 2 = a pair exists but fails isolation (sideband),
    0 = no pair. Outside region 1 the indices are -1 and ``CBL_RecoPhi_mass`` is -1.
    The packaged default config (reference analysis) reads it unchanged.

    Toy detector model (all effects vectorised, shapes change non-linearly with the masses):
    Phi produced with a pt and rapidity spectrum, isotropic two-body decay to gamma omega;
    omega decays either fully visibly or with a missing pi0 (visible mass and momentum lower;
    its fraction rises with m_omega along a sigmoid); the two-prong mass has a resolution
    growing with m_omega, a low-side tail, and degrades (and loses efficiency) when the prongs
    merge at high boost p/m_omega; photon energy has a resolution of ~2% with a low-side
    (conversion) tail; the reconstructed Phi mass is the invariant mass of the smeared photon
    and two-prong, so the 220 GeV photon-pt cut sculpts the low-m_Phi points; a wrong two-prong
    from the recoil is sometimes paired (mis-pairing continuum); acceptance (|eta|, ECAL gap),
    reconstruction and isolation efficiencies depend on the kinematics.

Gaussian toys (``make_gaussian_grid`` / ``make_gaussian_line``, kinds ``grid`` / ``line``)
    FEDHEX's 2D Gaussian toys: for each mean (mx, my) a correlated 2D Gaussian.
    ``grid`` uses every (x, y) pair of the two mean lists; ``line`` pairs them element-wise
    (points along a line). Folders ``x_<mx>_y_<my>``, flat float32 branches ``x``, ``y``
    (features) and ``label_x``, ``label_y`` (the means, labels), plus ``run``, ``event``.
    Config to use::

        [input]
        paths = ["<outdir>"]
        selection = ""
        [input.features]
        x = "x"
        y = "y"
        [input.labels]
        labelx = "label_x"
        labely = "label_y"

    (with ``[preprocessing.features.*]`` / ``[preprocessing.labels.*]`` set to
    ``transform = "none"`` and no ``relative_to``, since the toys are not positive masses.)
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fedhex_hep.errors import FedhexError

__all__ = [
    "DEMO_COMMAND",
    "DEMO_GRID",
    "DEMO_REFERENCE",
    "DEMO_REFERENCE_COMMAND",
    "SIGNAL_BRANCHES",
    "SampleError",
    "make_gaussian_grid",
    "make_gaussian_line",
    "make_samples",
    "make_signal_grid",
    "mass_point_dirname",
    "parse_mass_point_dirname",
]


class SampleError(FedhexError, ValueError):
    """Bad sample-writer input; the message names the option or folder at fault."""


# --------------------------------------------------------------------------------------------
# Demo grid shipped in data/demo
# --------------------------------------------------------------------------------------------

#: The grid shipped in ``data/demo`` (GeV). The lowest Phi masses (750, 1000) are where the
#: 220 GeV photon-pt cut sculpts the acceptance (photon pt ~ m_Phi/2 * sin(theta*)); omega
#: masses span the change of decay-mode mixture (missing-pi0 sigmoid around 4 GeV, 1 GeV wide)
#: and, with m_Phi, the prong-merging regime (boost p/m_omega ~ 250). The spacing is set by
#: those shape changes: the Phi-mass width changes by a factor 2.5 from m_omega = 2.5 to
#: 5 GeV, too fast for a 5 x 5 grid (omega 2.5 -> 5 -> 7.5) to pin down between its points.
#: m_omega is densest at 4-9 GeV, where the missing-pi0 fraction bends over and a held-out
#: point's widths follow the noise of its grid neighbours.
#: 8 x 13 points; the default generation label (1750, 6.25) lies off the grid. 10,000 events
#: per point give 4.5k-6.6k selected events per point, enough for the closure goals at
#: held-out points.
DEMO_GRID: dict[str, Any] = {
    "phi": (750.0, 1000.0, 1250.0, 1500.0, 1750.0, 2000.0, 2500.0, 3000.0),
    "omega": (1.0, 1.75, 2.5, 3.25, 4.0, 4.5, 5.0, 5.5, 6.0, 6.75, 7.5, 8.75, 10.0),
    "events": 10000,
    "seed": 0,
    "outdir": "data/demo",
}


def _fmt_list(values: Sequence[float]) -> str:
    return ",".join(_fmt_number(v) for v in values)


def _fmt_number(value: float) -> str:
    return np.format_float_positional(float(value), trim="-")


#: The exact command that regenerates ``data/demo`` (deterministic).
DEMO_COMMAND: str = (
    f"fedhex-hep make-samples signal {DEMO_GRID['outdir']} "
    f"--phi {_fmt_list(DEMO_GRID['phi'])} --omega {_fmt_list(DEMO_GRID['omega'])} "
    f"--events {DEMO_GRID['events']} --seed {DEMO_GRID['seed']} --overwrite"
)

#: Large, independent reference samples at nine interior demo points for closure tests:
#: >= 20k selected events per point (selection efficiency is ~40-65%). No two of
#: them are grid neighbours, so all nine can be held out of one training and each keeps its
#: direct neighbours. Not shipped (tens of MB); generated on demand with another seed than
#: ``data/demo``.
DEMO_REFERENCE: dict[str, Any] = {
    "phi": (1000.0, 1500.0, 2000.0),
    "omega": (2.5, 5.0, 7.5),
    "events": 60000,
    "seed": 1,
    "outdir": "data/reference",
}

DEMO_REFERENCE_COMMAND: str = (
    f"fedhex-hep make-samples signal {DEMO_REFERENCE['outdir']} "
    f"--phi {_fmt_list(DEMO_REFERENCE['phi'])} --omega {_fmt_list(DEMO_REFERENCE['omega'])} "
    f"--events {DEMO_REFERENCE['events']} --seed {DEMO_REFERENCE['seed']} --overwrite"
)


# --------------------------------------------------------------------------------------------
# Folder names
# --------------------------------------------------------------------------------------------

_NAME = r"[A-Za-z][A-Za-z0-9]*"
_VALUE = r"m?\d+(?:p\d+)?"
_DIRNAME_RE = re.compile(rf"^{_NAME}_{_VALUE}(?:_{_NAME}_{_VALUE})*$")
_PAIR_RE = re.compile(rf"({_NAME})_({_VALUE})(?:_|$)")


def _encode_value(value: float) -> str:
    from fedhex_hep.naming import NamingError, format_value

    try:
        return format_value(value)
    except NamingError:
        raise SampleError(f"mass point value {value!r} is not a finite number") from None


def point_dirname(**values: float) -> str:
    """Generic folder name ``<Name>_<value>_...`` for a point, e.g. ``x_1p5_y_m2``."""
    if not values:
        raise SampleError("a mass point needs at least one named value")
    return "_".join(f"{name}_{_encode_value(v)}" for name, v in values.items())


def mass_point_dirname(phi: float, omega: float) -> str:
    """Folder name of a signal mass point, e.g. (1870, 9.025) -> ``Phi_1870_omega_9p025`` (GeV)."""
    return point_dirname(Phi=phi, omega=omega)


def parse_mass_point_dirname(name: str) -> dict[str, float]:
    """Parse ``<Name>_<value>_<Name>_<value>...`` (``p`` = decimal point, ``m`` = minus sign).

    ``"Phi_1870_omega_9p025"`` -> ``{"Phi": 1870.0, "omega": 9.025}``. Raises ``SampleError``
    (a ValueError) naming the folder when it does not follow the pattern.
    """
    base = Path(str(name)).name
    if not _DIRNAME_RE.match(base):
        raise SampleError(
            f"folder name {base!r} is not a mass point name like 'Phi_1870_omega_9p025' "
            "(<Name>_<value> pairs joined by '_', 'p' as decimal point)"
        )
    out: dict[str, float] = {}
    for key, raw in _PAIR_RE.findall(base):
        if key in out:
            raise SampleError(f"folder name {base!r} gives {key!r} twice")
        out[key] = float(raw.replace("m", "-").replace("p", "."))
    return out


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def _point_rng(seed: int, *key: float) -> np.random.Generator:
    """A generator seeded by (seed, point, file): a point's events do not depend on the grid."""
    words = [int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF]
    for k in key:
        words.append(int(round(float(k) * 1000)) & 0xFFFFFFFF)
    return np.random.default_rng(np.random.SeedSequence(words))


def _round_mantissa(values: np.ndarray, bits: int) -> np.ndarray:
    """float32 with only ``bits`` mantissa bits kept (rounded), as NanoAOD stores its floats.

    The dropped low bits compress to nothing, which keeps the shipped demo grid small; 10 bits
    is 1e-3 relative precision, 16 bits 1.5e-5.
    """
    a = np.ascontiguousarray(values, dtype=np.float32)
    if bits >= 23:
        return a
    drop = 23 - bits
    u = a.view(np.uint32).astype(np.uint64)
    u = (u + (1 << (drop - 1))) & ~np.uint64((1 << drop) - 1)
    out = (u & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
    # rounding can only overflow into inf for |x| near float32 max, far beyond any mass here
    return np.where(np.isfinite(a), out, a)


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def _split_counts(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _as_mass_list(values: Any, what: str, unique: bool = True) -> list[float]:
    if isinstance(values, str):
        values = [v for v in values.replace(" ", "").split(",") if v]
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise SampleError(f"{what}: expected a list of numbers, got {values!r}") from None
    if not out:
        raise SampleError(f"{what}: empty list of masses")
    if unique and len(set(out)) != len(out):
        raise SampleError(f"{what}: repeated value in {out}")
    return out


COMPRESSIONS = ("lzma", "zlib", "none")


def _codec(compression: str):
    """uproot codec for a compression name. Level 1 for both: LZMA(1) is within ~10% of
    LZMA(6)'s size at a sixth of the time; ZLIB(1) writes ~10x faster than LZMA(1) and reads
    faster, for ~60% larger files (large benchmark grids)."""
    import uproot

    if compression == "lzma":
        return uproot.LZMA(1)
    if compression == "zlib":
        return uproot.ZLIB(1)
    if compression == "none":
        return None
    raise SampleError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")


def _write_tree(path: Path, branches: Mapping[str, Any], overwrite: bool, compression: str = "lzma") -> Path:
    """Write one TTree ``Events`` atomically (temp file, then rename) in one basket per branch."""
    import uproot

    from fedhex_hep.io.atomic import atomic_path

    codec = _codec(compression)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with uproot.recreate(tmp, compression=codec) as fout:
            # mktree with data = create the TTree, then one extend with all events: one large
            # basket per branch (a TTree, not the RNTuple that file[name] = ... writes).
            fout.mktree("Events", dict(branches), title="Events")
        # mkstemp creates 0600 files; give the samples the usual permissions (umask applies)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    return path


# --------------------------------------------------------------------------------------------
# Signal grid: toy detector model
# --------------------------------------------------------------------------------------------

SIGNAL_BRANCHES: tuple[str, ...] = (
    "run", "luminosityBlock", "event", "genWeight",
    "nPhoton", "Photon_pt", "Photon_eta", "Photon_phi",
    "nTwoProng", "TwoProng_pt", "TwoProng_eta", "TwoProng_phi", "TwoProng_mass", "TwoProng_massPi0",
    "nGenPhi", "GenPhi_mass", "nGenOmega", "GenOmega_mass",
    "CBL_Region", "CBL_RecoPhi_mass", "CBL_RecoPhi_photonindex", "CBL_RecoPhi_twoprongindex",
)

# Model constants (GeV). Chosen for a realistic-looking toy, not tuned to any detector.
_PHI_PT_MEAN = 60.0
_PHOTON_RES = 0.02          # relative photon energy resolution
_PHOTON_TAIL_FRAC = 0.08    # conversions / leakage: low-side tail
_PHOTON_TAIL_SCALE = 0.05
_MERGE_BOOST = 250.0        # p/m_omega at which half of the two-prongs are merged
_MISSING_PI0_MID = 4.0      # m_omega (GeV) where the missing-pi0 fraction is half-way up


def _boost(px, py, pz, e, bx, by, bz):
    """Lorentz-boost four-vectors (px,py,pz,e) by velocity (bx,by,bz)."""
    b2 = bx * bx + by * by + bz * bz
    gamma = 1.0 / np.sqrt(1.0 - b2)
    bp = bx * px + by * py + bz * pz
    # (gamma-1)/b2 written as gamma^2/(gamma+1): finite at b -> 0
    coef = gamma * gamma / (gamma + 1.0) * bp + gamma * e
    return px + coef * bx, py + coef * by, pz + coef * bz, gamma * (e + bp)


def _pt_eta_phi(px, py, pz):
    pt = np.hypot(px, py)
    eta = np.arcsinh(pz / np.maximum(pt, 1e-9))
    return pt, eta, np.arctan2(py, px)


def _inv_mass(pt1, eta1, phi1, m1, pt2, eta2, phi2, m2):
    px = pt1 * np.cos(phi1) + pt2 * np.cos(phi2)
    py = pt1 * np.sin(phi1) + pt2 * np.sin(phi2)
    pz = pt1 * np.sinh(eta1) + pt2 * np.sinh(eta2)
    e1 = np.sqrt((pt1 * np.cosh(eta1)) ** 2 + m1 * m1)
    e2 = np.sqrt((pt2 * np.cosh(eta2)) ** 2 + m2 * m2)
    m2tot = (e1 + e2) ** 2 - px * px - py * py - pz * pz
    return np.sqrt(np.maximum(m2tot, 0.0))


def _wrap_phi(phi):
    return (phi + np.pi) % (2.0 * np.pi) - np.pi


def _jagged_sorted(n, evt, fields: dict[str, np.ndarray], sort_key: np.ndarray):
    """Sort flat candidates by (event, -pt); return counts, sorted fields, position map."""
    order = np.lexsort((-sort_key, evt))
    evt_s = evt[order]
    counts = np.bincount(evt_s, minlength=n).astype(np.int64)
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
    local = np.arange(len(evt_s)) - offsets[evt_s]
    # position (within its event) of each original candidate after sorting
    pos = np.empty(len(evt_s), dtype=np.int64)
    pos[order] = local
    return counts, {k: v[order] for k, v in fields.items()}, pos


def _simulate_point(
    phi_mass: float, omega_mass: float, n: int, rng: np.random.Generator, threshold: float | None = None
) -> dict[str, Any]:
    """Simulate ``n`` events at (m_Phi, m_omega) in GeV; return the branch arrays (numpy/awkward).

    ``threshold`` (GeV, optional): m_omega at m_Phi = 1000 GeV below which the two prongs
    merge (the edge scales with m_Phi; see :func:`_threshold_merge`). The steps below draw
    from ``rng`` in a fixed order, so a point's events depend only on its seed.
    """
    M = float(phi_mass)
    w = float(omega_mass)
    if not (M > 0 and w > 0 and w < M):
        raise SampleError(f"mass point Phi={M}, omega={w}: need 0 < m_omega < m_Phi (GeV)")
    truth = _production_and_decay(M, w, n, rng)
    tp = _signal_twoprong(M, w, n, rng, truth, threshold)
    ph = _signal_photon(n, rng, truth)
    extra = _extra_candidates(n, rng, truth)
    lists = _candidate_lists(n, ph, tp, extra)
    region, ph_idx, tp_idx = _pair_and_isolate(n, rng, lists, tp)
    return _branches(M, w, n, lists, region, ph_idx, tp_idx)


def _production_and_decay(M: float, w: float, n: int, rng: np.random.Generator) -> dict[str, Any]:
    """Phi production (ISR-recoil pt, rapidity, azimuth) and its isotropic decay to gamma omega."""
    pt_phi = rng.gamma(2.0, _PHI_PT_MEAN / 2.0, n)
    y_phi = rng.normal(0.0, 0.8, n)
    az_phi = rng.uniform(-np.pi, np.pi, n)
    mt = np.sqrt(M * M + pt_phi**2)
    P = np.stack([pt_phi * np.cos(az_phi), pt_phi * np.sin(az_phi), mt * np.sinh(y_phi)])
    E = mt * np.cosh(y_phi)
    beta = P / E
    pstar = (M * M - w * w) / (2.0 * M)
    cth = rng.uniform(-1.0, 1.0, n)
    sth = np.sqrt(1.0 - cth * cth)
    az = rng.uniform(-np.pi, np.pi, n)
    g = _boost(pstar * sth * np.cos(az), pstar * sth * np.sin(az), pstar * cth, np.full(n, pstar),
               beta[0], beta[1], beta[2])
    o = (P[0] - g[0], P[1] - g[1], P[2] - g[2], E - g[3])
    return {"pt_phi": pt_phi, "az_phi": az_phi, "g": g, "o": o}


def _signal_twoprong(
    M: float, w: float, n: int, rng: np.random.Generator, truth: dict[str, Any], threshold: float | None
) -> dict[str, Any]:
    """The omega's decay mode, prong merging and the reconstructed signal two-prong."""
    o = truth["o"]
    # omega decay mode: fully visible, or a pi0 escapes (visible mass and momentum lower).
    # The missing-pi0 fraction rises along a sigmoid in m_omega: a shape change within cells.
    f_missing = 0.06 + 0.26 * _sigmoid((w - _MISSING_PI0_MID) / 1.0)
    missing = rng.random(n) < f_missing
    vis_frac = np.where(missing, rng.beta(6.0, 2.5, n), 1.0)      # visible momentum fraction
    vis_mass = np.where(missing, w * rng.uniform(0.45, 0.85, n), w)
    o_pt, o_eta, o_az = _pt_eta_phi(o[0] * vis_frac, o[1] * vis_frac, o[2] * vis_frac)
    o_p = np.sqrt(o[0] ** 2 + o[1] ** 2 + o[2] ** 2)
    # prong merging at high boost p/m_omega
    p_merge = _sigmoid((np.log(o_p / w) - np.log(_MERGE_BOOST)) / 0.35)
    merged = rng.random(n) < p_merge
    rel_res = 0.025 + 0.004 * w                                   # resolution grows with m_omega
    rel_res = np.where(merged, 1.8 * rel_res, rel_res)
    bias = np.where(merged, -0.03, 0.0)
    m_reco = vis_mass * (1.0 + bias + rel_res * rng.standard_normal(n))
    tail = rng.random(n) < 0.10                                   # low-side tail (lost neutrals)
    m_reco = np.where(tail, m_reco * (1.0 - rng.exponential(0.08, n)), m_reco)
    if threshold is not None:
        m_reco = _threshold_merge(m_reco, M, w, float(threshold), rng)
    m_reco = np.maximum(m_reco, 0.05 * w)
    tp_pt = o_pt * (1.0 + (0.02 + 0.02 * o_pt / 1000.0) * rng.standard_normal(n))
    tp_pt = np.maximum(tp_pt, 1.0)
    tp_eta = o_eta + 0.002 * rng.standard_normal(n)
    tp_phi = _wrap_phi(o_az + 0.002 * rng.standard_normal(n))
    tp_mass = m_reco * rng.uniform(0.55, 0.95, n)                 # charged-only mass
    eff_tp = 0.95 * (1.0 - 0.25 * merged) * np.where(missing, 0.85, 1.0)
    tp_ok = (np.abs(tp_eta) < 2.5) & (tp_pt > 20.0) & (rng.random(n) < eff_tp)
    return {"pt": tp_pt, "eta": tp_eta, "phi": tp_phi, "mass": tp_mass, "massPi0": m_reco, "ok": tp_ok,
            "merged": merged, "p_merge": p_merge}


def _signal_photon(n: int, rng: np.random.Generator, truth: dict[str, Any]) -> dict[str, Any]:
    """The reconstructed signal photon: ~2% resolution, low-side conversion tail, acceptance."""
    g = truth["g"]
    ph_pt_true, ph_eta_true, ph_az_true = _pt_eta_phi(g[0], g[1], g[2])
    scale = 1.0 + _PHOTON_RES * rng.standard_normal(n)
    conv = rng.random(n) < _PHOTON_TAIL_FRAC
    scale = np.where(conv, scale * (1.0 - rng.exponential(_PHOTON_TAIL_SCALE, n)), scale)
    ph_pt = ph_pt_true * np.maximum(scale, 0.05)
    ph_eta = ph_eta_true + 0.001 * rng.standard_normal(n)
    ph_phi = _wrap_phi(ph_az_true + 0.001 * rng.standard_normal(n))
    aeta = np.abs(ph_eta)
    ph_ok = (aeta < 2.5) & ~((aeta > 1.4442) & (aeta < 1.566)) & (rng.random(n) < 0.96)
    return {"pt": ph_pt, "eta": ph_eta, "phi": ph_phi, "ok": ph_ok}


def _extra_candidates(n: int, rng: np.random.Generator, truth: dict[str, Any]) -> dict[str, Any]:
    """Extra candidates: soft photons, and two-prongs from the hadronic recoil."""
    pt_phi, az_phi = truth["pt_phi"], truth["az_phi"]
    n_xph = rng.poisson(0.4, n)
    n_xtp = rng.poisson(0.5, n)
    evt_xph = np.repeat(np.arange(n), n_xph)
    evt_xtp = np.repeat(np.arange(n), n_xtp)
    k, j = len(evt_xph), len(evt_xtp)
    ph = {"evt": evt_xph, "pt": 15.0 + rng.exponential(30.0, k), "eta": rng.uniform(-2.5, 2.5, k),
          "phi": rng.uniform(-np.pi, np.pi, k)}
    xtp_pt = 20.0 + rng.exponential(25.0, j) + rng.uniform(0.0, 0.8, j) * pt_phi[evt_xtp]
    xtp_eta = np.clip(rng.normal(0.0, 1.2, j), -2.45, 2.45)
    xtp_phi = _wrap_phi(az_phi[evt_xtp] + np.pi + rng.normal(0.0, 0.6, j))
    xtp_mpi0 = 0.3 + rng.exponential(1.5, j)
    tp = {"evt": evt_xtp, "pt": xtp_pt, "eta": xtp_eta, "phi": xtp_phi,
          "mass": xtp_mpi0 * rng.uniform(0.5, 0.95, j), "massPi0": xtp_mpi0}
    return {"photon": ph, "twoprong": tp}


def _sorted_collection(n: int, sig: dict[str, Any], extra: dict[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """Signal + extra candidates as pt-sorted per-event lists (NanoAOD convention), with the
    sorted index of the signal candidate and of the leading extra candidate (-1 if none)."""
    ok = sig["ok"]
    ev = np.arange(n)
    evt = np.concatenate([ev[ok], extra["evt"]])
    is_sig = np.concatenate([np.ones(ok.sum(), bool), np.zeros(len(extra["evt"]), bool)])
    first_extra = np.concatenate([np.zeros(ok.sum(), bool), _first_of_event(extra["evt"], extra["pt"], n)])
    pt = np.concatenate([sig["pt"][ok], extra["pt"]])
    counts, flat, pos = _jagged_sorted(
        n, evt, {f: np.concatenate([sig[f][ok], extra[f]]) for f in fields}, pt
    )
    return {"counts": counts, "flat": flat, "sig_idx": _scatter_index(n, evt, pos, is_sig),
            "lead_extra_idx": _scatter_index(n, evt, pos, first_extra)}


def _candidate_lists(n: int, ph: dict[str, Any], tp: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "photon": _sorted_collection(n, ph, extra["photon"], ("pt", "eta", "phi")),
        "twoprong": _sorted_collection(n, tp, extra["twoprong"], ("pt", "eta", "phi", "mass", "massPi0")),
    }


def _pair_and_isolate(
    n: int, rng: np.random.Generator, lists: dict[str, Any], tp: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CBL pairing and isolation: (region, photon index, two-prong index) per event.

    The signal photon if reconstructed, else the leading extra photon; the signal two-prong,
    except for a mis-pairing with a recoil two-prong (more often when the signal prongs are
    merged, and sometimes when the signal two-prong was lost). Region 1 = isolated pair,
    2 = pair failing isolation, 0 = no pair.
    """
    sig_ph_idx, lead_xph_idx = lists["photon"]["sig_idx"], lists["photon"]["lead_extra_idx"]
    sig_tp_idx, lead_xtp_idx = lists["twoprong"]["sig_idx"], lists["twoprong"]["lead_extra_idx"]
    ph_idx = np.where(sig_ph_idx >= 0, sig_ph_idx, lead_xph_idx)
    p_mis = 0.02 + 0.04 * tp["p_merge"]
    use_wrong = np.where(sig_tp_idx >= 0, rng.random(n) < p_mis, rng.random(n) < 0.15)
    tp_idx = np.where(use_wrong & (lead_xtp_idx >= 0), lead_xtp_idx, sig_tp_idx)
    pair = (ph_idx >= 0) & (tp_idx >= 0)
    tp_is_signal = pair & (tp_idx == sig_tp_idx)
    iso_tp = np.where(tp_is_signal, 0.93 - 0.08 * tp["merged"], 0.55)
    iso_ph = np.where(ph_idx == sig_ph_idx, 0.95, 0.6)
    iso = (rng.random(n) < iso_tp) & (rng.random(n) < iso_ph)
    region = np.where(pair, np.where(iso, 1, 2), 0).astype(np.int32)
    return region, ph_idx, tp_idx


def _branches(
    M: float, w: float, n: int, lists: dict[str, Any], region: np.ndarray, ph_idx: np.ndarray, tp_idx: np.ndarray
) -> dict[str, Any]:
    """The reconstructed Phi mass of the chosen pair (region 1 only; -1 elsewhere) and every
    branch, floats with NanoAOD-like reduced mantissas."""
    import awkward as ak

    nph, phf = lists["photon"]["counts"], lists["photon"]["flat"]
    ntp, tpf = lists["twoprong"]["counts"], lists["twoprong"]["flat"]
    phoff = np.concatenate(([0], np.cumsum(nph)[:-1]))
    tpoff = np.concatenate(([0], np.cumsum(ntp)[:-1]))
    sel = region == 1
    gi = phoff[sel] + ph_idx[sel]
    ti = tpoff[sel] + tp_idx[sel]
    reco = np.full(n, -1.0)
    reco[sel] = _inv_mass(phf["pt"][gi], phf["eta"][gi], phf["phi"][gi], 0.0,
                          tpf["pt"][ti], tpf["eta"][ti], tpf["phi"][ti], tpf["massPi0"][ti])

    def jag(values: np.ndarray, counts: np.ndarray, bits: int) -> ak.Array:
        return ak.unflatten(_round_mantissa(values, bits), counts)

    photon = ak.zip({"pt": jag(phf["pt"], nph, 12), "eta": jag(phf["eta"], nph, 10), "phi": jag(phf["phi"], nph, 10)})
    twoprong = ak.zip(
        {"pt": jag(tpf["pt"], ntp, 12), "eta": jag(tpf["eta"], ntp, 10), "phi": jag(tpf["phi"], ntp, 10),
         "mass": jag(tpf["mass"], ntp, 12), "massPi0": jag(tpf["massPi0"], ntp, 16)},
    )
    ones = np.ones(n, dtype=np.int64)
    return {
        "genWeight": np.ones(n, dtype=np.float32),
        "Photon": photon,
        "TwoProng": twoprong,
        "GenPhi": ak.zip({"mass": ak.unflatten(np.full(n, M, dtype=np.float32), ones)}),
        "GenOmega": ak.zip({"mass": ak.unflatten(np.full(n, w, dtype=np.float32), ones)}),
        "CBL_Region": region,
        "CBL_RecoPhi_mass": _round_mantissa(reco, 16),
        "CBL_RecoPhi_photonindex": np.where(sel, ph_idx, -1).astype(np.int32),
        "CBL_RecoPhi_twoprongindex": np.where(sel, tp_idx, -1).astype(np.int32),
    }


#: width of the prong-merging turn-on of ``make_signal_grid(threshold=...)``, in log(m_omega)
THRESHOLD_WIDTH = 0.05
#: share of events whose prongs merge well below the threshold
THRESHOLD_MAX_SHARE = 0.6


def _threshold_merge(m_reco: np.ndarray, M: float, w: float, threshold: float, rng: np.random.Generator) -> np.ndarray:
    """A prong-merging turn-on: below m_omega = ``threshold`` * m_Phi / 1000 GeV (a fixed boost
    m_Phi / m_omega, where the two prongs stop being resolved) a share of the events, rising
    to THRESHOLD_MAX_SHARE within a few percent of m_omega, is reconstructed from the leading
    prong alone: 35-75% of the pair's mass, more smeared. A shape change within one grid cell
    whose place in m_omega moves with m_Phi."""
    edge = threshold * M / 1000.0
    share = THRESHOLD_MAX_SHARE * float(_sigmoid((np.log(edge) - np.log(w)) / THRESHOLD_WIDTH))
    n = len(m_reco)
    merged = rng.random(n) < share
    frac = rng.uniform(0.35, 0.75, n) * (1.0 + 0.08 * rng.standard_normal(n))
    return np.where(merged, m_reco * frac, m_reco)


def _first_of_event(evt: np.ndarray, pt: np.ndarray, n: int) -> np.ndarray:
    """Mask of the highest-pt candidate of each event among (evt, pt)."""
    mask = np.zeros(len(evt), dtype=bool)
    if len(evt) == 0:
        return mask
    order = np.lexsort((-pt, evt))
    first = np.ones(len(order), dtype=bool)
    first[1:] = evt[order][1:] != evt[order][:-1]
    mask[order[first]] = True
    return mask


def _scatter_index(n: int, evt: np.ndarray, pos: np.ndarray, flag: np.ndarray) -> np.ndarray:
    out = np.full(n, -1, dtype=np.int64)
    out[evt[flag]] = pos[flag]
    return out


def _events_for(n_events: int | Mapping, phi: float, omega: float) -> int:
    if isinstance(n_events, Mapping):
        for key in ((phi, omega), (float(phi), float(omega)), mass_point_dirname(phi, omega)):
            if key in n_events:
                value = n_events[key]
                break
        else:
            if "default" in n_events:
                value = n_events["default"]
            else:
                raise SampleError(
                    f"n_events has no entry for mass point {mass_point_dirname(phi, omega)} "
                    "(keys: (phi, omega) tuples, folder names, or 'default')"
                )
    else:
        value = n_events
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise SampleError(f"n_events for {mass_point_dirname(phi, omega)} must be a positive integer, got {value!r}")
    return int(value)


def make_signal_grid(
    outdir: str | Path,
    phi_masses: Sequence[float],
    omega_masses: Sequence[float],
    n_events: int | Mapping = 5000,
    seed: int = 0,
    files_per_point: int = 1,
    overwrite: bool = False,
    compression: str = "lzma",
    threshold: float | None = None,
) -> list[Path]:
    """Write a NanoAOD-like Phi -> gamma omega signal grid (masses in GeV); return the files.

    One folder per (m_Phi, m_omega) pair, ``outdir/Phi_<m>_omega_<m>/nano_<i>.root``, TTree
    ``Events``. ``n_events`` is per point: an int, or a mapping keyed by ``(phi, omega)`` or folder
    name (optional ``"default"``). Each point/file is seeded from ``(seed, m_Phi, m_omega, i)``,
    so a point's events do not depend on the other points of the grid. Existing files are
    refused unless ``overwrite``. ``compression``: "lzma" (default, smallest, as NanoAOD),
    "zlib" (fastest to write and read, ~60% larger) or "none". Floats are stored with
    NanoAOD-like reduced mantissa precision (16 bits for the two features, 10-12 elsewhere).
    ``threshold`` (GeV): add a prong-merging turn-on below m_omega = threshold * m_Phi / 1000
    GeV (a shape change within one grid cell); None (default): no such turn-on.
    """
    _codec(compression)  # refuse a bad name before any work
    if threshold is not None and not (np.isfinite(threshold) and threshold > 0):
        raise SampleError(f"threshold must be a positive m_omega in GeV, got {threshold!r}")
    phis = _as_mass_list(phi_masses, "phi masses")
    omegas = _as_mass_list(omega_masses, "omega masses")
    if isinstance(files_per_point, bool) or int(files_per_point) != files_per_point or files_per_point < 1:
        raise SampleError(f"files_per_point must be a positive integer, got {files_per_point!r}")
    outdir = Path(outdir)
    written: list[Path] = []
    for phi in phis:
        for omega in omegas:
            n_total = _events_for(n_events, phi, omega)
            folder = outdir / mass_point_dirname(phi, omega)
            first_event = 1
            for i, n_file in enumerate(_split_counts(n_total, int(files_per_point))):
                if n_file == 0:
                    continue
                rng = _point_rng(seed, phi, omega, i)
                data = _simulate_point(phi, omega, n_file, rng, threshold)
                event = np.arange(first_event, first_event + n_file, dtype=np.uint64)
                first_event += n_file
                branches = {
                    "run": np.ones(n_file, dtype=np.uint32),
                    "luminosityBlock": (1 + (event - 1) // 1000).astype(np.uint32),
                    "event": event,
                    **data,
                }
                written.append(_write_tree(folder / f"nano_{i}.root", branches, overwrite, compression))
    return written


# --------------------------------------------------------------------------------------------
# Gaussian toys
# --------------------------------------------------------------------------------------------

def _gaussian_points(
    outdir: Path, points: list[tuple[float, float]], n_events: int, sigma: tuple[float, float],
    rho: float, seed: int, overwrite: bool, compression: str = "lzma",
) -> list[Path]:
    sx, sy = (float(s) for s in sigma)
    if not (sx > 0 and sy > 0):
        raise SampleError(f"sigma must be positive, got {sigma!r}")
    if not -1.0 < float(rho) < 1.0:
        raise SampleError(f"rho must be in (-1, 1), got {rho!r}")
    if isinstance(n_events, bool) or int(n_events) != n_events or n_events < 1:
        raise SampleError(f"n_events must be a positive integer, got {n_events!r}")
    n = int(n_events)
    written = []
    for mx, my in points:
        rng = _point_rng(seed, mx, my)
        z1, z2 = rng.standard_normal(n), rng.standard_normal(n)
        x = mx + sx * z1
        y = my + sy * (rho * z1 + math.sqrt(1.0 - rho * rho) * z2)
        branches = {
            "run": np.ones(n, dtype=np.uint32),
            "event": np.arange(1, n + 1, dtype=np.uint64),
            "x": x.astype(np.float32),
            "y": y.astype(np.float32),
            "label_x": np.full(n, mx, dtype=np.float32),
            "label_y": np.full(n, my, dtype=np.float32),
        }
        written.append(
            _write_tree(outdir / point_dirname(x=mx, y=my) / "nano_0.root", branches, overwrite, compression)
        )
    return written


def make_gaussian_grid(
    outdir: str | Path,
    x_means: Sequence[float] = (0.0, 1.0, 2.0, 3.0, 4.0),
    y_means: Sequence[float] = (0.0, 1.0, 2.0, 3.0, 4.0),
    n_events: int = 2000,
    seed: int = 0,
    sigma: tuple[float, float] = (0.3, 0.3),
    rho: float = 0.0,
    overwrite: bool = False,
    compression: str = "lzma",
) -> list[Path]:
    """FEDHEX's toy: a 2D Gaussian (``sigma``, correlation ``rho``) at every (x, y) mean pair."""
    xs = _as_mass_list(x_means, "x means")
    ys = _as_mass_list(y_means, "y means")
    return _gaussian_points(
        Path(outdir), [(x, y) for x in xs for y in ys], n_events, sigma, rho, seed, overwrite, compression
    )


def make_gaussian_line(
    outdir: str | Path,
    x_means: Sequence[float] = (0.0, 1.0, 2.0, 3.0, 4.0),
    y_means: Sequence[float] = (0.0, 1.0, 2.0, 3.0, 4.0),
    n_events: int = 2000,
    seed: int = 0,
    sigma: tuple[float, float] = (0.3, 0.3),
    rho: float = 0.0,
    overwrite: bool = False,
    compression: str = "lzma",
) -> list[Path]:
    """FEDHEX's toy: 2D Gaussians at means along a line, (x_means[i], y_means[i]) pairwise."""
    xs = _as_mass_list(x_means, "x means", unique=False)
    ys = _as_mass_list(y_means, "y means", unique=False)
    if len(xs) != len(ys):
        raise SampleError(f"line toy: x means ({len(xs)}) and y means ({len(ys)}) must have the same length")
    return _gaussian_points(Path(outdir), list(zip(xs, ys)), n_events, sigma, rho, seed, overwrite, compression)


# --------------------------------------------------------------------------------------------
# CLI dispatcher
# --------------------------------------------------------------------------------------------

_KINDS = ("signal", "grid", "line")


def make_samples(
    kind: str = "signal",
    outdir: str | Path = DEMO_GRID["outdir"],
    *,
    phi: Sequence[float] | str | None = None,
    omega: Sequence[float] | str | None = None,
    x: Sequence[float] | str | None = None,
    y: Sequence[float] | str | None = None,
    events: int | None = None,
    seed: int = 0,
    files_per_point: int = 1,
    sigma: tuple[float, float] | None = None,
    rho: float = 0.0,
    overwrite: bool = False,
    compression: str = "lzma",
    threshold: float | None = None,
) -> list[Path]:
    """Dispatcher behind ``fedhex-hep make-samples KIND OUTDIR``; options map 1:1 to CLI flags.

    ``--phi/--omega`` (signal; default: the demo grid), ``--x/--y`` (grid/line means),
    ``--events`` (per point), ``--seed``, ``--files-per-point`` (signal), ``--sigma``/``--rho``
    (Gaussian toys), ``--overwrite``, ``--compression`` (lzma|zlib|none), ``--threshold``
    (signal: m_omega in GeV at m_Phi = 1 TeV below which the prongs merge). Lists may be given
    as "1,2,3" strings.
    """
    if kind not in _KINDS:
        raise SampleError(f"unknown sample kind {kind!r}; choose one of {', '.join(_KINDS)}")
    if kind == "signal":
        if x is not None or y is not None or sigma is not None:
            raise SampleError("options --x/--y/--sigma are for the 'grid' and 'line' toys, not 'signal'")
        return make_signal_grid(
            outdir,
            phi if phi is not None else DEMO_GRID["phi"],
            omega if omega is not None else DEMO_GRID["omega"],
            n_events=events if events is not None else DEMO_GRID["events"],
            seed=seed,
            files_per_point=files_per_point,
            overwrite=overwrite,
            compression=compression,
            threshold=threshold,
        )
    if threshold is not None:
        raise SampleError(f"option --threshold is for 'signal' samples, not {kind!r}")
    if phi is not None or omega is not None:
        raise SampleError(f"options --phi/--omega are for 'signal' samples, not {kind!r} (use --x/--y)")
    if files_per_point != 1:
        raise SampleError(f"option --files-per-point is for 'signal' samples, not {kind!r}")
    func = make_gaussian_grid if kind == "grid" else make_gaussian_line
    kwargs: dict[str, Any] = {"seed": seed, "rho": rho, "overwrite": overwrite, "compression": compression}
    if x is not None:
        kwargs["x_means"] = x
    if y is not None:
        kwargs["y_means"] = y
    if events is not None:
        kwargs["n_events"] = events
    if sigma is not None:
        kwargs["sigma"] = tuple(_as_mass_list(sigma, "sigma", unique=False))
        if len(kwargs["sigma"]) != 2:
            raise SampleError(f"sigma: expected two values (sigma_x, sigma_y), got {sigma!r}")
    return func(outdir, **kwargs)
