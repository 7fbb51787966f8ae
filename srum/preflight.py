# SPDX-License-Identifier: Apache-2.0
"""Preflight: everything a run needs, checked before anything runs (``--dry-run``).

A :class:`Preflight` collects problems instead of stopping at the first, so one dry run
lists every missing download, path and GPU at once. It never touches the network: a hub
id is checked against the local Hugging Face cache only ("not cached" then means "download
it before the run", which compute nodes without internet need anyway). Checks:

* models: a local BAGEL-7B-MoT / Qwen2.5-VL directory with its files, or a hub id in the
  cache; a relative path that does not exist is named with the folder it is relative to;
* files: prompt files, SAM checkpoint, manifests, reward files;
* versions: torch, transformers (the declared floor), flash-attn importable and working
  on CUDA (missing is fine: SDPA is used; broken is reported with its error);
* GPUs: the visible count against the processes x GPUs per process of each launch.
"""
from __future__ import annotations

import math
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

BAGEL_FILES = ("llm_config.json", "vit_config.json", "ae.safetensors")
BAGEL_WEIGHTS = ("ema.safetensors", "model.safetensors")
JUDGE_FILES = ("config.json", "preprocessor_config.json")


@dataclass
class Preflight:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    commands: list[tuple[str, list[str]]] = field(default_factory=list)
    gpus_needed: dict[str, int] = field(default_factory=dict)   # launch label -> GPUs per node

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    # ------------------------------------------------------------ paths
    def file(self, label: str, path: str | os.PathLike | None, fix: str = "") -> None:
        if path is None:
            return
        p = Path(path).expanduser()
        if not p.is_file():
            self.problem(f"{label}: {_where(p)} not found{'; ' + fix if fix else ''}")

    def model(self, label: str, path_or_id: str, kind: str = "bagel", weights: str = "auto",
              gpus_per_process: int = 1) -> None:
        """A Bagel (``kind="bagel"``) or Qwen2.5-VL judge (``kind="judge"``) directory or hub
        id; when it is here and GPUs are visible, also whether its weights fit the
        ``gpus_per_process`` GPUs each process spreads it over."""
        self._check_model(label, str(path_or_id), kind, weights)
        size = weights_bytes(str(path_or_id))
        if size:
            self.fits(label, size, gpus_per_process)

    def fits(self, label: str, size: int, gpus_per_process: int) -> None:
        """The weights alone take at most 80 % of each of the process's GPUs (activations,
        the KV cache and the CUDA context need the rest)."""
        memory = _gpu_memory()
        if not memory or size / gpus_per_process <= 0.8 * memory:
            return
        need = math.ceil(size / (0.8 * memory))
        self.problem(f"{label}: {size / 1e9:.0f} GB of weights over {gpus_per_process} GPU(s) of "
                     f"{memory / 1e9:.0f} GB does not fit: give this step's layout gpus_per_process >= {need}")

    def _check_model(self, label: str, text: str, kind: str, weights: str) -> None:
        p = Path(text).expanduser()
        files = BAGEL_FILES if kind == "bagel" else JUDGE_FILES
        if p.is_dir():
            missing = [f for f in files if not (p / f).is_file()]
            if kind == "bagel" and not _has_weights(p, weights):
                missing.append(" or ".join(BAGEL_WEIGHTS))
            if kind == "judge" and not (any(p.glob("*.safetensors")) or any(p.glob("*.safetensors.index.json"))):
                missing.append("*.safetensors")
            if missing:
                self.problem(f"{label}: {p} lacks {', '.join(missing)}")
            return
        if not _looks_like_hub_id(text):
            self.problem(f"{label}: {_where(p)} not found (and {text!r} is not a hub id of the form owner/name)")
            return
        probe = [files[0], (BAGEL_WEIGHTS[0] if weights in ("auto", "ema") else "model.safetensors")
                 if kind == "bagel" else "model.safetensors.index.json"]
        if not all(_cached(text, name) for name in probe):
            size = {"bagel": " (~29 GB)", "judge": " (Qwen2.5-VL-72B: ~147 GB)" if "72B" in text else ""}[kind]
            self.problem(f"{label}: hub id {text} is not cached here{size} (nor is it a folder: {_where(p)}); "
                         f"download it first "
                         f"(`huggingface-cli download {text}`) or give a local directory "
                         "(the dry run never uses the network)")

    # ------------------------------------------------------------ launches and GPUs
    def launch(self, label: str, command: list[str], gpus_per_node: int) -> None:
        self.commands.append((label, command))
        self.gpus_needed[label] = max(self.gpus_needed.get(label, 0), gpus_per_node)

    def check_gpus(self) -> None:
        """One process per node with one device may run on a CPU (the tiny and miniature
        demos); a layout of more processes or GPUs per process needs that many GPUs."""
        need = max(self.gpus_needed.values(), default=0)
        visible = _visible_gpus()
        if need <= 1:
            if visible == 0:
                self.note("no CUDA GPU visible: the stages run on the CPU (fine for the tiny and miniature models)")
            return
        if visible == 0:
            worst = max(self.gpus_needed, key=self.gpus_needed.get)
            self.problem(f"GPUs: no CUDA GPU is visible here; the layout needs {need} per node ({worst}). "
                         "Run the dry run on a compute node to check GPUs, CUDA and flash-attn")
        elif visible < need:
            short = [f"{k} ({v})" for k, v in self.gpus_needed.items() if v > visible]
            self.problem(f"GPUs: {visible} visible, but {', '.join(short)} need more per node: change the "
                         "layouts (launcher.nproc_per_node, <stage>.layout) or run on a bigger node")

    # ------------------------------------------------------------ versions
    def check_versions(self) -> None:
        import torch
        floor = declared_floor("transformers")
        try:
            import transformers
        except ImportError as err:
            self.problem(f"transformers: not importable ({err}); pip install 'transformers>={floor or '4.51'}'")
        else:
            if floor and _version_tuple(transformers.__version__) < _version_tuple(floor):
                self.problem(f"transformers: {transformers.__version__} installed, srum needs >= {floor}")
        self.note(f"torch {torch.__version__}, CUDA {'available' if torch.cuda.is_available() else 'not available'}")
        if torch.cuda.is_available():
            error = flash_attn_error()
            if error == "not installed":
                self.note("flash-attn: not installed; attention runs on PyTorch SDPA")
            elif error:
                self.problem(f"flash-attn: installed but broken ({error}); uninstall it (SDPA is then used) "
                             "or rebuild it against this torch/CUDA")

    # ------------------------------------------------------------ report
    def report(self, stream=None, commands: bool = True) -> int:
        """Print the launch commands (unless already shown), notes and every problem;
        returns the exit code: 1 when there is any problem."""
        import sys
        stream = stream or sys.stdout
        for label, cmd in self.commands if commands else []:
            print(f"[{label}] $ {shlex.join(cmd)}", file=stream)
        for note in self.notes:
            print(f"note: {note}", file=stream)
        if not self.problems:
            print("preflight: no problem found", file=stream)
            return 0
        print(f"preflight: {len(self.problems)} problem(s):", file=stream)
        for text in self.problems:
            print(f"  - {text}", file=stream)
        return 1


def _where(p: Path) -> str:
    return str(p) if p.is_absolute() else f"{p} (relative to {Path.cwd()})"


def _looks_like_hub_id(text: str) -> bool:
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and not os.path.exists(text)


def _has_weights(p: Path, weights: str) -> bool:
    names = BAGEL_WEIGHTS if weights == "auto" else (f"{weights}.safetensors",)
    return any((p / n).is_file() or (p / f"{n}.index.json").is_file() for n in names)


def _cached(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:   # a malformed id: not cached either
        return False


def _gpu_memory() -> int | None:
    """The smallest visible GPU's memory in bytes (None without CUDA)."""
    import torch
    if not torch.cuda.is_available() or not torch.cuda.device_count():
        return None
    return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))


def weights_bytes(path_or_id: str) -> int | None:
    """Bytes of a model's ``*.safetensors`` here (a local folder, or the cached snapshot of
    a hub id); None when it is not here. A Bagel folder counts its EMA weights once."""
    p = Path(path_or_id).expanduser()
    if not p.is_dir() and _looks_like_hub_id(path_or_id):
        from huggingface_hub import try_to_load_from_cache
        for probe in ("config.json", "llm_config.json"):
            found = try_to_load_from_cache(path_or_id, probe)
            if isinstance(found, str):
                p = Path(found).parent
                break
    if not p.is_dir():
        return None
    files = [f for f in p.glob("*.safetensors") if f.name != "ae.safetensors"]
    if (p / "ema.safetensors").is_file():   # a Bagel folder may hold ema and model weights: one is loaded
        files = [p / "ema.safetensors"]
    return sum(f.stat().st_size for f in files) or None


def _visible_gpus() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text.split("+")[0])[:3])


def declared_floor(package: str) -> str | None:
    """The ``>=`` floor srum declares for ``package`` (installed metadata, else pyproject.toml)."""
    lines: list[str] = []
    try:
        from importlib.metadata import requires
        lines = requires("srum") or []
    except Exception:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        if pyproject.is_file():
            lines = pyproject.read_text().splitlines()
    for line in lines:
        m = re.search(rf"['\"]?{re.escape(package)}\s*>=\s*([0-9][0-9.]*)", line)
        if m:
            return m.group(1)
    return None


def flash_attn_error() -> str | None:
    """None when flash-attn imports and runs a tiny attention on CUDA; "not installed";
    else the error (a build for another torch or CUDA fails with anything but ImportError)."""
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return "not installed"
    except Exception as err:   # undefined symbols, CUDA mismatch: the broken-build cases
        return f"{type(err).__name__}: {err}"
    try:
        import torch
        q = torch.randn(1, 8, 2, 64, device="cuda", dtype=torch.bfloat16)
        flash_attn_func(q, q, q)
        torch.cuda.synchronize()
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return None


def stage_command() -> list[str]:
    """The command line this process was started with, as ``--dry-run`` shows it."""
    import sys
    cmd = [sys.executable, "-m", "srum", *[a for a in sys.argv[1:] if a != "--dry-run"]]
    if "WORLD_SIZE" in os.environ:
        cmd = ["torchrun", f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', '1')}", "-m", "srum",
               *cmd[3:]]
    return cmd


# ---------------------------------------------------------------- one stage command
JUDGED_EVALS = ("eval compbench", "eval t2i-reasonbench", "eval wise")   # evaluations with an MLLM judge


def benchmark_data_problems(benchmark: str, cfg) -> list[str]:
    """The user's copy of a benchmark that reads its own files (T2I-ReasonBench, WISE):
    what is missing, as problem lines (``srum eval ... --dry-run`` and ``srum pipeline``)."""
    if benchmark == "t2i-reasonbench" and not (Path(cfg.data_dir).expanduser() / "prompts").is_dir():
        return [f"data_dir: {cfg.data_dir} has no prompts/ folder; point it at your copy of T2I-ReasonBench"]
    if benchmark == "wise":
        from .evaluation.wise import data_problems
        return data_problems(cfg)
    return []


def check_stage(name: str, cfg, step: str | None = None) -> Preflight:
    """The preflight of ``srum <name> --dry-run``: the paths, models and GPUs of one stage
    command's config (``step``: of ``srum eval compbench STEP``)."""
    pf = Preflight()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    model = getattr(cfg, "model", None)
    draws = step in (None, "generate", "all")
    if model is not None and draws:
        pf.model("model.path", model.path, weights=getattr(model, "weights", "auto"),
                 gpus_per_process=getattr(model, "gpus_per_process", 1))
    prompts = getattr(cfg, "prompts", None)
    for path in prompts if draws and isinstance(prompts, list) else []:
        pf.file("prompts", path)
    for field_name in ("images", "regions", "metadata"):
        own_checks = name.startswith(JUDGED_EVALS) or name == "eval geneval"
        if isinstance(getattr(cfg, field_name, None), str) and not own_checks:
            pf.file(field_name, getattr(cfg, field_name))
    if name == "propose":
        sam = cfg.proposals.sam
        if cfg.proposals.backend == "sam" and sam.model_type != "tiny":
            pf.file("proposals.sam.checkpoint", sam.checkpoint or "<unset>",
                    "download sam_vit_h_4b8939.pth from the segment-anything release (2.4 GB)")
    if name == "judge" and cfg.judge.backend != "self" and cfg.judge.judge_model:
        pf.model("judge.judge_model", cfg.judge.judge_model, kind="judge")
    if name == "train":
        for rewards in cfg.data.rewards:
            pf.file("data.rewards", rewards)
    if name == "eval geneval":   # GenEval's own scorer, in its own environment
        from srum.evaluation.geneval_score import check_geneval_setup
        check_geneval_setup(pf, cfg)
    judged = name in JUDGED_EVALS and step in ("score", "all")
    for text in benchmark_data_problems(name.removeprefix("eval "), cfg):
        pf.problem(text)
    served = judged and cfg.judge.backend == "openai"   # a served judge: no weights to find or place here
    if served:
        pf.note(f"judge: served at {cfg.judge.server.base_url} (not checked)")
    elif judged:
        pf.model("judge.model", cfg.judge.model, kind="judge", gpus_per_process=cfg.judge.gpus_per_process)
    if judged and step == "score":
        pf.file("images", cfg.images or Path(cfg.out_dir) / "images" / "manifest.jsonl",
                "run the generate step first, or set images=")
    g = max([getattr(model, "gpus_per_process", 1) if model is not None else 1] +
            ([cfg.judge.gpus_per_process] if judged and not served else []))
    pf.launch(name, stage_command(), local * g)
    pf.check_versions()
    pf.check_gpus()
    return pf
