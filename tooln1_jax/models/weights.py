"""Qwen2 and Qwen3 weights in and out: HF safetensors (single file or sharded index), HF hub ids, GGUF files.

`load` validates every tensor name and shape against the config before it allocates anything, then places the
tensors one at a time straight onto their shards of the target mesh (stacked layer tensors are filled layer by
layer on the device), so host memory holds about one tensor, never the whole model twice.
`save_hf` streams the parameters back out, one tensor at a time, as a directory transformers loads (the caller adds
the tokenizer files: `assets.copy_tokenizer`).

A weight file the documentation tells users to fetch is checked against its sha256 in `PINNED_SHA256` before it is
read (`check_pinned`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tooln1_jax import parallel
from tooln1_jax.models import qwen2, safetensors_io
from tooln1_jax.models.qwen2 import Qwen2Config

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_IGNORED_HF_TENSORS = ("rotary_emb.inv_freq",)  # buffers some old checkpoints carry

# File name -> sha256 of the weight files the documentation tells users to fetch (docs/development.md, "Real weights
# for local checks"); None: no full hash recorded, so the file is refused until one is.
PINNED_SHA256: dict[str, str] = {
    # docs/development.md: assembled from six PyPI packages of an unknown publisher; the file whose forward pass
    # tests/test_gguf_real.py checks against transformers
    "qwen2.5-coder-0.5b-instruct.gguf": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
}


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """A file's sha256, computed once per (path, size, modification time): a run opens its weights more than once
    (the config header, then the tensors)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def check_pinned(path: str | os.PathLike) -> None:
    """Refuse a file named in `PINNED_SHA256` whose sha256 is not the pinned one."""
    path = Path(path)
    if path.name not in PINNED_SHA256:
        return
    stat = path.stat()
    expected, found = PINNED_SHA256[path.name], _sha256(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if found != expected:
        raise ValueError(f"{path}: sha256 {found}, but {path.name} is pinned to {expected} "
                         "(models/weights.PINNED_SHA256): a different or damaged file, not used")


# ---- the mapping between our parameter tree and HF tensor names ------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One parameter leaf <-> one HF tensor (per layer when `stacked`), with the layout change both ways."""

    path: tuple[str, ...]
    hf_name: str  # "{i}" stands for the layer index when stacked
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    stacked: bool = True

    def hf_names(self, config: Qwen2Config) -> list[str]:
        if not self.stacked:
            return [self.hf_name]
        return [self.hf_name.format(i=i) for i in range(config.num_hidden_layers)]


def tensor_maps(config: Qwen2Config) -> list[TensorMap]:
    e, d = config.hidden_size, config.head_dim
    same = lambda a: a  # noqa: E731
    transpose = lambda a: a.T  # noqa: E731  HF Linear weight [out, in] <-> our kernel [in, out]

    def heads_in(heads):  # HF [heads*D, E] <-> ours [E, heads, D]
        return (lambda w: w.T.reshape(e, heads, d)), (lambda k: k.reshape(e, heads * d).T)

    def heads_bias(heads):  # HF [heads*D] <-> ours [heads, D]
        return (lambda b: b.reshape(heads, d)), (lambda b: b.reshape(heads * d))

    attn = "model.layers.{i}.self_attn."
    maps = [TensorMap(("model", "embed_tokens", "embedding"), "model.embed_tokens.weight", same, same, False)]
    for proj, heads in (("q_proj", config.num_attention_heads), ("k_proj", config.num_key_value_heads),
                        ("v_proj", config.num_key_value_heads)):
        maps.append(TensorMap(("model", "layers", "self_attn", proj, "kernel"), attn + proj + ".weight",
                              *heads_in(heads)))
        if config.qkv_bias:
            maps.append(TensorMap(("model", "layers", "self_attn", proj, "bias"), attn + proj + ".bias",
                                  *heads_bias(heads)))
    h = config.num_attention_heads
    maps.append(TensorMap(("model", "layers", "self_attn", "o_proj", "kernel"), attn + "o_proj.weight",
                          lambda w: w.T.reshape(h, d, e), lambda k: k.reshape(h * d, e).T))
    if config.attention_bias:
        maps.append(TensorMap(("model", "layers", "self_attn", "o_proj", "bias"), attn + "o_proj.bias", same, same))
    if config.qk_norm:
        for norm in ("q_norm", "k_norm"):
            maps.append(TensorMap(("model", "layers", "self_attn", norm, "scale"), f"{attn}{norm}.weight", same, same))
    for proj in ("gate_proj", "up_proj", "down_proj"):
        maps.append(TensorMap(("model", "layers", "mlp", proj, "kernel"), f"model.layers.{{i}}.mlp.{proj}.weight",
                              transpose, transpose))
    for norm in ("input_layernorm", "post_attention_layernorm"):
        maps.append(TensorMap(("model", "layers", norm, "scale"), f"model.layers.{{i}}.{norm}.weight", same, same))
    maps.append(TensorMap(("model", "norm", "scale"), "model.norm.weight", same, same, False))
    if not config.tie_word_embeddings:
        maps.append(TensorMap(("lm_head", "kernel"), "lm_head.weight", transpose, transpose, False))
    return maps


def hf_shapes(config: Qwen2Config) -> dict[str, tuple[int, ...]]:
    """Expected HF tensor name -> shape for this config (derived through the same layout maps)."""
    shapes, _ = qwen2.abstract_params(config)
    out = {}
    for tm in tensor_maps(config):
        leaf = _get(shapes, tm.path)
        shape = leaf.shape[1:] if tm.stacked else leaf.shape
        hf = jax.eval_shape(tm.to_hf, jax.ShapeDtypeStruct(shape, jnp.float32)).shape
        out.update({name: tuple(hf) for name in tm.hf_names(config)})
    return out


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# ---- tensor sources ----------------------------------------------------------------------------------------------
class TensorSource:
    """HF-named tensors from somewhere: `shapes()` maps each name to its HF shape, `read(name)` returns it in the HF
    layout (any float dtype), `where(name)` names its file."""

    hf_config: dict
    description: str

    def where(self, name: str) -> str:
        return self.description


class SafetensorsSource(TensorSource):
    """An HF model directory: config.json plus model.safetensors or a sharded index."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.description = str(self.dir)
        config_path = self.dir / "config.json"
        if not config_path.exists():
            raise FileNotFoundError(f"{self.dir}: no config.json (not a Hugging Face model directory)")
        self.hf_config = json.loads(config_path.read_text())
        self.hf_config_path = config_path
        index_path = self.dir / INDEX_FILE
        if index_path.exists():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{index_path}: not a safetensors index ({e!r})") from None
            files = sorted(set(weight_map.values()))
        elif (self.dir / SINGLE_FILE).exists():
            weight_map, files = None, [SINGLE_FILE]
        else:
            raise FileNotFoundError(f"{self.dir}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
        self._files = {}
        for file in files:
            path = self.dir / file
            if not path.exists():
                raise FileNotFoundError(f"{path}: listed in {INDEX_FILE} but missing")
            self._files[file] = safetensors_io.SafetensorsFile(path)
        self._file_of = {}
        for file, st in self._files.items():
            for name in st.names():
                if weight_map is not None and weight_map.get(name) not in (None, file):
                    raise ValueError(f"{self.dir / file}: holds {name!r}, which {INDEX_FILE} places in "
                                     f"{weight_map[name]}")
                self._file_of[name] = file
        if weight_map is not None:
            absent = [n for n, f in weight_map.items() if n not in self._file_of]
            if absent:
                raise ValueError(f"{index_path}: tensor {absent[0]!r} is listed in {weight_map[absent[0]]} "
                                 f"but that file does not contain it ({len(absent)} such tensors)")

    def shapes(self):
        return {name: self._files[file].shape(name) for name, file in self._file_of.items()}

    def read(self, name):
        return self._files[self._file_of[name]].read(name)

    def where(self, name):
        return str(self.dir / self._file_of[name]) if name in self._file_of else str(self.dir)


# llama.cpp tensor names of the qwen2 and qwen3 architectures -> HF names
_GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_LAYER_NAMES = {  # blk.{i}.<key> -> model.layers.{i}.<value>
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    **{f"attn_{x}.{p}": f"self_attn.{x}_proj.{p}" for x in "qkv" for p in ("weight", "bias")},
    **{f"attn_output.{p}": f"self_attn.o_proj.{p}" for p in ("weight", "bias")},
    **{f"attn_{x}_norm.weight": f"self_attn.{x}_norm.weight" for x in "qk"},  # qwen3
    **{f"ffn_{x}.weight": f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")},
}


def gguf_to_hf_name(name: str) -> str | None:
    if name in _GGUF_NAMES:
        return _GGUF_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _GGUF_LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_GGUF_LAYER_NAMES[parts[2]]}"
    return None


class GGUFSource(TensorSource):
    """A llama.cpp GGUF file of architecture qwen2 or qwen3; quantized tensors are dequantized to float32 one at a
    time. Neither architecture permutes the q/k rows (llama.cpp does that for llama only).

    A GGUF that stores `output.weight` keeps its own (separately quantized) output projection, so it loads as an
    untied head, as transformers and llama.cpp read it; without it the head is tied to the embedding.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.description = str(self.path)
        if not self.path.exists():
            raise FileNotFoundError(f"GGUF file not found: {self.path}")
        check_pinned(self.path)
        try:
            self.reader = _plain_array_reader()(str(self.path))
        except Exception as e:  # the reader raises assorted errors on a damaged file
            raise ValueError(f"{self.path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
        arch = self._field("general.architecture")
        if arch not in qwen2.MODEL_TYPES:
            raise ValueError(f"{self.path}: general.architecture is {arch!r}; only 'qwen2' and 'qwen3' GGUF files "
                             "are supported")
        self._tensors = {}
        for t in self.reader.tensors:
            hf_name = gguf_to_hf_name(t.name)
            if hf_name is None:
                raise ValueError(f"{self.path}: unexpected tensor {t.name!r} for a {arch} model")
            self._tensors[hf_name] = t
        embed = self._tensors.get("model.embed_tokens.weight")
        if embed is None:
            raise ValueError(f"{self.path}: no token_embd.weight tensor")
        hidden = int(self._field(f"{arch}.embedding_length"))
        heads = int(self._field(f"{arch}.attention.head_count"))
        self.hf_config = {
            "model_type": arch,
            "vocab_size": int(embed.shape[1]),  # GGUF shapes are [row length, rows]
            "hidden_size": hidden,
            "intermediate_size": int(self._field(f"{arch}.feed_forward_length")),
            "num_hidden_layers": int(self._field(f"{arch}.block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(self._field(f"{arch}.attention.head_count_kv", heads)),
            "head_dim": int(self._field(f"{arch}.attention.key_length", hidden // heads)),  # llama.cpp's default
            "max_position_embeddings": int(self._field(f"{arch}.context_length", 32768)),
            "rope_theta": float(self._field(f"{arch}.rope.freq_base", 10000.0)),
            "rms_norm_eps": float(self._field(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
            "attention_bias": "model.layers.0.self_attn.o_proj.bias" in self._tensors,  # read for qwen3 only
        }

    def _field(self, key, default=None):
        field = self.reader.fields.get(key)
        if field is None:
            if default is None:
                raise ValueError(f"{self.path}: metadata key {key!r} is missing")
            return default
        return field.contents()

    def shapes(self):
        return {name: tuple(int(d) for d in reversed(t.shape)) for name, t in self._tensors.items()}

    def read(self, name):
        from gguf.quants import dequantize

        t = self._tensors[name]
        return dequantize(np.asarray(t.data), t.tensor_type).reshape(tuple(int(d) for d in reversed(t.shape)))


@functools.cache
def _plain_array_reader():
    """The GGUFReader subclass below, made on first use (gguf is imported lazily)."""
    import gguf

    class PlainArrayReader(gguf.GGUFReader):
        """GGUFReader over a plain ndarray view of its memory map: slicing a np.memmap costs microseconds per
        slice in subclass bookkeeping, and the tokenizer's metadata alone is ~10^6 slices (12 s -> 1 s to open)."""

        @property
        def data(self):
            return self._plain

        @data.setter
        def data(self, value):
            self._plain = np.asarray(value)

    return PlainArrayReader


class ArraySource(TensorSource):
    """In-memory HF-named arrays (tests, conversions from a transformers state dict)."""

    def __init__(self, hf_config: dict, arrays: dict[str, np.ndarray], description: str = "<arrays>"):
        self.hf_config, self.arrays, self.description = hf_config, arrays, description

    def shapes(self):
        return {name: tuple(a.shape) for name, a in self.arrays.items()}

    def read(self, name):
        return self.arrays[name]


def open_source(path: str | os.PathLike) -> TensorSource:
    """A local HF directory or .gguf file; otherwise an HF hub id (local cache first, then the hub)."""
    p = Path(path)
    if p.suffix == ".gguf" or p.is_file():
        return GGUFSource(p)
    if p.is_dir():
        return SafetensorsSource(p)
    if str(path).count("/") == 1 and not str(path).startswith((".", "/")):
        return SafetensorsSource(_hub_snapshot(str(path)))
    raise FileNotFoundError(f"model not found: {path} (not a directory, a .gguf file, or an HF hub id)")


def _hub_snapshot(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt"]
    with contextlib.suppress(Exception):
        return snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
    try:
        return snapshot_download(repo_id, allow_patterns=patterns)
    except Exception as e:
        raise FileNotFoundError(f"{repo_id!r} is not a local path and the Hugging Face hub copy could not be "
                                f"fetched ({type(e).__name__}: {e}); pass a local directory or .gguf file") from None


# ---- validation and placement ------------------------------------------------------------------------------------
def validate(config: Qwen2Config, source: TensorSource) -> None:
    """Every expected tensor present with the expected shape, nothing unexplained left over."""
    expected, actual = hf_shapes(config), source.shapes()
    for name, shape in expected.items():
        if name not in actual:
            missing = [n for n in expected if n not in actual]
            raise ValueError(f"{source.where(name)}: tensor {name!r} is missing ({len(missing)} expected tensors "
                             f"missing in all); the checkpoint does not match its config")
        if tuple(actual[name]) != shape:
            what = "vocabulary size" if name in ("model.embed_tokens.weight", "lm_head.weight") else "shape"
            raise ValueError(f"{source.where(name)}: tensor {name!r} has shape {tuple(actual[name])}, the config "
                             f"implies {shape} ({what} mismatch between checkpoint and config)")
    extra = [n for n in actual if n not in expected and not n.endswith(_IGNORED_HF_TENSORS)]
    if extra == ["lm_head.weight"] and config.tie_word_embeddings:
        return  # some tied checkpoints store the (identical) head too
    if extra:
        raise ValueError(f"{source.where(extra[0])}: unexpected tensor {extra[0]!r} ({len(extra)} unexpected in "
                         f"all); the checkpoint does not match its config")


def default_dtype() -> str:
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def load(path: str | os.PathLike, mesh: Mesh | None = None, dtype: str | None = None,
         param_dtype: str = "float32", rules: parallel.Rules = parallel.RULES):
    """(config, params) from an HF directory, an HF hub id, or a .gguf file, placed on `mesh`.

    dtype: compute dtype (default: bfloat16 on accelerators, float32 on CPU); param_dtype: storage dtype.
    """
    source = open_source(path)
    where = getattr(source, "hf_config_path", source.description)
    config = Qwen2Config.from_hf(source.hf_config, source=str(where), dtype=dtype or default_dtype(),
                                 param_dtype=param_dtype)
    return config, load_params(config, source, mesh, rules)


def load_params(config: Qwen2Config, source: TensorSource, mesh: Mesh | None = None,
                rules: parallel.Rules = parallel.RULES):
    validate(config, source)
    mesh = mesh or parallel.single_device_mesh()
    shapes, logical = qwen2.abstract_params(config)
    target = parallel.shardings(shapes, logical, mesh, rules)
    dtype = np.dtype(config.param_dtype)
    params: dict = {}
    for tm in tensor_maps(config):
        shape, sharding = _get(shapes, tm.path).shape, _get(target, tm.path)

        def host_tensor(name, tm=tm):
            return np.asarray(tm.to_ours(source.read(name)), dtype=dtype)

        if tm.stacked:
            array = _place_stacked(shape, dtype, sharding,
                                   [functools.partial(host_tensor, n) for n in tm.hf_names(config)])
        else:
            array = _place(host_tensor(tm.hf_name), sharding)
        _set(params, tm.path, array)
    return params


def _place(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _place_stacked(shape, dtype, sharding: NamedSharding, layers: list[Callable[[], np.ndarray]]) -> jax.Array:
    """Fill a [layers, ...] array on its shards one layer at a time (host holds one layer tensor)."""
    spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
    if spec[0] is not None:
        raise ValueError("the layers axis must not be sharded")
    layer_sharding = NamedSharding(sharding.mesh, PartitionSpec(*spec[1:]))
    stacked = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()
    set_layer = jax.jit(lambda s, x, i: jax.lax.dynamic_update_index_in_dim(s, x, i, 0),
                        out_shardings=sharding, donate_argnums=0)
    for i, read in enumerate(layers):
        stacked = set_layer(stacked, _place(read(), layer_sharding), np.int32(i))
    return stacked


# ---- saving ------------------------------------------------------------------------------------------------------
def _host(x: jax.Array) -> np.ndarray:
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def save_hf(config: Qwen2Config, params, directory: str | os.PathLike, *, dtype: str | None = None,
            max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write config.json + safetensors (sharded with an index above `max_shard_bytes`) + generation_config.json.

    dtype: storage dtype (default: the config's param dtype). Only process 0 writes in a multi-host run (all
    processes must call it).
    """
    out = Path(directory)
    np_dtype = np.dtype(jnp.dtype(dtype or config.param_dtype))
    fetchers = {}
    for tm in tensor_maps(config):
        leaf = _get(params, tm.path)
        for i, name in enumerate(tm.hf_names(config)):
            def fetch(tm=tm, leaf=leaf, i=i):
                return tm.to_hf(_host(leaf[i] if tm.stacked else leaf))

            fetchers[name] = fetch
    shards, current, size = [], [], 0
    for name, shape in hf_shapes(config).items():
        nbytes = int(np.prod(shape)) * np_dtype.itemsize
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape, np_dtype))
        size += nbytes
    shards.append(current)

    if jax.process_index() != 0:  # take part in the same gathers, in the same order, and write nothing
        for fetch in fetchers.values():
            fetch()
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**config.to_hf(), "torch_dtype": str(np_dtype)}, indent=2) + "\n")
    names = [SINGLE_FILE] if len(shards) == 1 else [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
                                                     for k in range(len(shards))]
    weight_map, total = {}, 0
    for file, shard in zip(names, shards):
        total += safetensors_io.write(out / file, shard, lambda n: fetchers[n]())
        weight_map.update({name: file for name, _, _ in shard})
    if len(shards) > 1:
        (out / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                 indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643}, indent=2) + "\n")
    return out
