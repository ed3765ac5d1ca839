"""Load PyTorch checkpoint pickles without executing anything from them.

Two gates stand between a hostile pickle and the interpreter:

1. `pickle_length` walks the opcodes with `pickletools.genops` (a parser, not an interpreter) and
   bounds what CPython's C unpickler would otherwise trust: the pickle's size, memo indices (the
   unpickler allocates memo slots up to the largest index it is given), how deeply hashable
   tuples nest (hashing a tuple nested a million deep overflows the C stack), and how many dict
   and set keys have a hash the file can choose (see `MAX_CRAFTABLE_KEYS`). It also refuses a
   `GLOBAL` outside the allow-list before a single object is built.
2. `load_pickle` unpickles with `find_class` returning inert stand-ins for the allow-listed torch
   globals and refusing every other one, so `REDUCE` can only ever call the stand-ins below.

The stand-ins validate their arguments and record what a tensor is (storage, dtype, offset, shape,
stride); the container formats (`pytorch.py`) turn those records into numpy views.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
from collections.abc import Callable
from typing import Any, NamedTuple, TypeGuard

from modelsieve.fingerprint.dtypes import dtype_named
from modelsieve.fingerprint.errors import ModelFileError, UnsafePickleError, quoted

MAX_PICKLE_BYTES = 32 * 2**20  # torch's data.pkl holds only structure: ~100 bytes per tensor
MAX_TUPLE_NESTING = 100
MAX_PICKLE_OBJECTS = 8_000_000
MAX_PICKLE_CONTAINERS = 2_000_000
"""What one pickle may build. A byte can make a 200-byte object (an empty set), so the size bound alone
let 32 MB grow into tens of GB; these keep the worst case near 1 GB. torch's data.pkl builds about 23
objects per tensor, 5 of them containers (tuples, dicts, rebuilt tensors): 340,000 tensors fit."""
MAX_CRAFTABLE_KEYS = 1000
"""Dict and set keys whose hash the file can choose: tuples, frozensets, built objects and integers
of 2⁶¹−1 or more. Unlike str and bytes hashes, theirs are not salted per process, so a file can
make thousands collide (k·(2⁶¹−1) all hash to 0; a tuple's hash is solvable for its last element)
and every insertion then compares against all the others: quadratic time, hours for a few MB.
Checkpoints key their dicts by strings and small integers; a thousand such keys cost nothing."""
MAX_DIMS = 64
_MAX_INDEX = 2**62
_HASH_MODULUS = 2**61 - 1  # CPython's numeric hash is the value modulo this prime (sys.hash_info.modulus)

# torch storage classes and dtypes → safetensors dtype names.
TORCH_STORAGE_DTYPES = {
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "DoubleStorage": "F64",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "ComplexFloatStorage": "C64",
}
TORCH_DTYPES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "bool": "BOOL",
    "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0",
}


class StorageType(NamedTuple):
    """Stand-in for `torch.FloatStorage` & co.; dtype None for `torch.UntypedStorage` (raw bytes)."""

    dtype: str | None


class TorchDType(NamedTuple):
    """Stand-in for a `torch.<dtype>` object (used by `_rebuild_tensor_v3`)."""

    dtype: str


class StorageRef(NamedTuple):
    """A storage named by a persistent id: its key in the file, element dtype (None: bytes), size."""

    key: str
    dtype: str | None
    nbytes: int


class PickledTensor(NamedTuple):
    """What `torch._utils._rebuild_tensor*` would have built: a strided view of a storage."""

    storage: StorageRef
    dtype: str
    offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def is_contiguous(self) -> bool:
        """Row-major contiguous (dimensions of size 1 may carry any stride, as in torch)."""
        expected = 1
        for dim, step in zip(reversed(self.shape), reversed(self.stride)):
            if dim != 1 and step != expected:
                return False
            expected *= dim
        return True


class StateDict(dict[Any, Any]):
    """Stand-in for `collections.OrderedDict`: a plain dict that keeps pickled attributes apart.

    torch pickles `state_dict()._metadata` through BUILD; `__slots__` leaves no instance `__dict__`,
    so BUILD can only reach `__setstate__` below, never plant attributes.
    """

    __slots__ = ("attributes",)

    def __init__(self, items: object = ()) -> None:
        """`OrderedDict(items)`; the keys are checked before they are hashed (see MAX_CRAFTABLE_KEYS)."""
        pairs = list(items.items()) if isinstance(items, dict) else [tuple(pair) for pair in items]  # type: ignore[attr-defined]
        if any(len(pair) != 2 for pair in pairs):
            raise ModelFileError("OrderedDict items must be (key, value) pairs")
        if sum(_craftable(key) for key, _ in pairs) > MAX_CRAFTABLE_KEYS:
            raise ModelFileError(f"OrderedDict has more than {MAX_CRAFTABLE_KEYS} keys whose hash the file can choose")
        super().__init__(pairs)

    def __setstate__(self, state: object) -> None:
        self.attributes = state


def _craftable(key: object) -> bool:
    """True for a key whose hash a file can choose freely (see MAX_CRAFTABLE_KEYS)."""
    if type(key) is int:
        return abs(key) >= _HASH_MODULUS - 2  # hash(-1) == hash(-2): keep clear of the edge
    return type(key) not in (str, bytes, bool, float, type(None))


class OpaqueObject:
    """Stand-in for allow-listed data-only objects (numpy scalars, Lightning callback state).

    Accepts any constructor arguments and state and keeps none of them: nothing runs, nothing is read.
    """

    __slots__ = ()
    global_name = ""

    def __new__(cls, *args: object, **kwargs: object) -> OpaqueObject:
        return object.__new__(cls)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


def _is_index(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_INDEX


def _dims(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > MAX_DIMS or not all(_is_index(d) for d in value):
        raise ModelFileError(f"tensor {what} must be a sequence of at most {MAX_DIMS} non-negative integers")
    return tuple(value)


def _tensor(storage: object, dtype: str | None, offset: object, size: object, stride: object) -> PickledTensor:
    """Validate a tensor's storage view, including that every element lies inside the storage."""
    if not isinstance(storage, StorageRef):
        raise ModelFileError("tensor storage is not a storage reference")
    dtype = dtype or storage.dtype
    if dtype is None:
        raise ModelFileError("tensor on an untyped storage names no dtype")
    if storage.dtype is not None and storage.dtype != dtype:
        raise ModelFileError(f"tensor dtype {dtype} differs from its storage's {storage.dtype}")
    if not _is_index(offset):
        raise ModelFileError("tensor storage offset must be a non-negative integer")
    shape, strides = _dims(size, "shape"), _dims(stride, "stride")
    if len(shape) != len(strides):
        raise ModelFileError(f"tensor shape {shape} and stride {strides} differ in length")
    tensor = PickledTensor(storage, dtype, offset, shape, strides)
    if tensor.numel:
        last = offset + sum((dim - 1) * step for dim, step in zip(shape, strides))
        if (last + 1) * (dtype_named(dtype).bits // 8) > storage.nbytes:
            raise ModelFileError(
                f"tensor of shape {shape} at offset {offset} reaches past its {storage.nbytes}-byte storage"
            )
    return tensor


def _rebuild_tensor(storage: object, storage_offset: object, size: object, stride: object) -> PickledTensor:
    return _tensor(storage, None, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> PickledTensor:
    return _tensor(storage, None, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    backward_hooks: object,
    dtype: object,
    metadata: object = None,
) -> PickledTensor:
    if not isinstance(dtype, TorchDType):
        raise ModelFileError("tensor dtype is not a torch dtype")
    return _tensor(storage, dtype.dtype, storage_offset, size, stride)


def _rebuild_parameter(data: object, requires_grad: object = False, backward_hooks: object = None, state: object = None) -> PickledTensor:
    if not isinstance(data, PickledTensor):
        raise ModelFileError("parameter data is not a tensor")
    return data


def _torch_size(dims: object = ()) -> tuple[int, ...]:
    return _dims(dims, "size")


def _latin1_bytes(text: object, encoding: object = "utf-8") -> bytes:
    """`_codecs.encode(text, 'latin1')`: how protocol 2 pickles bytes; no other use is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("refusing pickle global _codecs.encode other than for latin1 bytes")
    return text.encode("latin-1")


def _opaque(global_name: str) -> type[OpaqueObject]:
    return type(f"Opaque[{global_name}]", (OpaqueObject,), {"__slots__": (), "global_name": global_name})


# Data-only globals seen in real Stable Diffusion 1.x checkpoints (training step counters, the
# Lightning checkpoint callback's saved fields). They become opaque placeholders, never imports.
INERT_GLOBALS = (
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
)

ALLOWED_GLOBALS: dict[str, object] = {
    "collections.OrderedDict": StateDict,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch.Size": _torch_size,
    "_codecs.encode": _latin1_bytes,
    "torch.UntypedStorage": StorageType(None),
    "torch.storage.UntypedStorage": StorageType(None),
    **{f"torch.{name}": StorageType(dtype) for name, dtype in TORCH_STORAGE_DTYPES.items()},
    **{f"torch.{name}": TorchDType(dtype) for name, dtype in TORCH_DTYPES.items()},
    **{name: _opaque(name) for name in INERT_GLOBALS},
}


def allowed_global(module: str, name: str) -> object:
    """The stand-in for an allow-listed global; UnsafePickleError naming any other."""
    qualified = f"{module}.{name}"
    try:
        return ALLOWED_GLOBALS[qualified]
    except KeyError:
        raise UnsafePickleError(f"refusing pickle global {qualified if len(qualified) <= 120 else quoted(qualified)}") from None


class _Mark:
    """The pickle stack's MARK while `pickle_length` simulates it."""


_MARK = _Mark()


class _Item(NamedTuple):
    """What `pickle_length` knows of one simulated stack entry."""

    depth: int  # how deeply it nests tuples
    craftable: bool  # usable as a key whose hash the file chooses (see MAX_CRAFTABLE_KEYS)


_SCALAR = _Item(0, False)
_TUPLE_BUILDERS = frozenset({"EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "FROZENSET"})
_IN_PLACE = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD", "READONLY_BUFFER"})
_MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})
_INTEGERS = frozenset({"INT", "LONG", "LONG1", "LONG4"})  # the opcodes that can carry integers past 32 bits
_BUILT = frozenset({"REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST", "BINPERSID", "PERSID"})
_CONTAINERS = _TUPLE_BUILDERS | _BUILT | frozenset({"EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET", "DICT", "LIST"})
_SHALLOW = 2  # nesting of anything a stand-in returns (validated tensors, storages, sizes)


def _pop(stack: list[_Item | _Mark], count: int) -> list[_Item]:
    if count > len(stack):
        raise ModelFileError("malformed pickle: stack underflow")
    popped = stack[len(stack) - count :] if count else []
    del stack[len(stack) - count :]
    if any(item is _MARK for item in popped):
        raise ModelFileError("malformed pickle: unexpected MARK")
    return popped  # type: ignore[return-value]


def _pop_to_mark(stack: list[_Item | _Mark]) -> list[_Item]:
    for position in range(len(stack) - 1, -1, -1):
        if stack[position] is _MARK:
            items = stack[position + 1 :]
            del stack[position:]
            return items  # type: ignore[return-value]
    raise ModelFileError("malformed pickle: no MARK")


def _hash_keys(name: str, items: list[_Item], prefix: list[_Item]) -> list[_Item]:
    """The entries an opcode hashes as dict or set keys."""
    if name == "SETITEM":
        return prefix[1:2]
    if name in ("SETITEMS", "DICT"):
        return items[::2]
    if name in ("ADDITEMS", "FROZENSET"):
        return items
    return []


class _Simulation:
    """The stack effect of each opcode, tracking only what `pickle_length` bounds."""

    def __init__(self) -> None:
        self.stack: list[_Item | _Mark] = []
        self.memo: list[_Item | _Mark] = []  # a list: indices never skip ahead, and a dict of millions is large
        self.craftable_keys = self.objects = self.containers = 0

    def step(self, op: pickletools.OpcodeInfo, arg: Any) -> None:
        stack, memo, name = self.stack, self.memo, op.name
        if name in _MEMO_PUT:
            index = len(memo) if name == "MEMOIZE" else arg
            if index > len(memo):
                raise ModelFileError(f"pickle memo index {index} skips ahead of the {len(memo)} slots written")
            if not stack:
                raise ModelFileError("malformed pickle: memoizing an empty stack")
            if index == len(memo):
                memo.append(stack[-1])
            else:
                memo[index] = stack[-1]
            return
        if name in _MEMO_GET:
            if arg >= len(memo):
                raise ModelFileError(f"pickle reads memo slot {arg} before writing it")
            stack.append(memo[arg])
            return
        if name == "DUP":
            stack.append(_pop(stack, 1)[0])
            stack.append(stack[-1])
            return
        if name == "MARK":
            stack.append(_MARK)
            return
        before = op.stack_before
        if pickletools.markobject in before:
            items = _pop_to_mark(stack)
            prefix = _pop(stack, before.index(pickletools.markobject))
        else:
            items, prefix = [], _pop(stack, len(before))
        self.craftable_keys += sum(key.craftable for key in _hash_keys(name, items, prefix))
        if self.craftable_keys > MAX_CRAFTABLE_KEYS:
            raise ModelFileError(
                f"pickle uses more than {MAX_CRAFTABLE_KEYS} dict or set keys whose hash it can choose (tuples, "
                "objects, huge integers): refused, as colliding keys would take hours to insert"
            )
        if not op.stack_after:
            return
        if name not in _IN_PLACE:
            self.objects += 1
            self.containers += name in _CONTAINERS
            if self.objects > MAX_PICKLE_OBJECTS or self.containers > MAX_PICKLE_CONTAINERS:
                raise ModelFileError(
                    f"pickle builds more than {MAX_PICKLE_OBJECTS} objects or {MAX_PICKLE_CONTAINERS} containers, "
                    "beyond any checkpoint's structure"
                )
        if name in _TUPLE_BUILDERS:
            depth = 1 + max((item.depth for item in items + prefix), default=0)
            if depth > MAX_TUPLE_NESTING:
                raise ModelFileError(f"pickle nests tuples more than {MAX_TUPLE_NESTING} deep")
            stack.append(_Item(depth, True))
        elif name in _IN_PLACE:
            stack.append(prefix[0])
        elif name in _BUILT:
            stack.append(_Item(_SHALLOW, True))
        elif name in _INTEGERS:
            stack.append(_Item(0, _craftable(arg)))
        else:
            stack.append(_SCALAR)


def pickle_length(data: bytes) -> int:
    """Check the pickle at the start of `data` opcode by opcode (nothing is built) and return its length.

    Raises ModelFileError for malformed or oversized pickles, UnsafePickleError for refused globals.
    """
    simulation = _Simulation()
    try:
        for op, arg, position in pickletools.genops(data):
            assert position is not None  # genops reads bytes through a BytesIO, whose tell() always answers
            if position >= MAX_PICKLE_BYTES:
                raise ModelFileError(f"pickle is larger than the bound of {MAX_PICKLE_BYTES} bytes")
            if op.name in ("GLOBAL", "INST"):
                allowed_global(*str(arg).split(" ", 1))
            simulation.step(op, arg)
            if op.name == "STOP":
                return position + 1
    except ModelFileError:
        raise
    except Exception as exc:  # genops raises ValueError and decoding errors on malformed input
        if len(data) >= MAX_PICKLE_BYTES:  # the caller cut the input at the bound: the pickle ran past it
            raise ModelFileError(f"pickle is larger than the bound of {MAX_PICKLE_BYTES} bytes") from None
        raise ModelFileError(f"malformed pickle: {_one_line(exc)}") from None
    raise ModelFileError("truncated pickle: no STOP opcode")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, persistent_load: Callable[[object], object]) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._resolve_persistent = persistent_load

    def find_class(self, module: str, name: str) -> object:
        return allowed_global(module, name)

    def persistent_load(self, pid: object) -> object:
        return self._resolve_persistent(pid)


def _refuse_persistent_ids(pid: object) -> object:
    raise ModelFileError("unexpected persistent id in a pickle that should hold plain data")


def load_pickle(data: bytes, persistent_load: Callable[[object], object] = _refuse_persistent_ids) -> tuple[object, int]:
    """Unpickle the first pickle in `data` with the allow-list; return the object and the bytes used.

    `persistent_load` maps persistent ids (torch's storage references) to objects; by default none
    are allowed.
    """
    length = pickle_length(data)
    try:
        return _RestrictedUnpickler(data[:length], persistent_load).load(), length
    except ModelFileError:
        raise
    except Exception as exc:  # hostile input: any failure inside the unpickler is a malformed file
        raise ModelFileError(f"malformed pickle: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def parse_storage_pid(pid: object) -> tuple[StorageType, str, int]:
    """Validate torch's storage persistent id ('storage', type, key, location, numel[, view]).

    Returns the storage type, key and size in elements (bytes for untyped storages).
    """
    if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
        raise ModelFileError("persistent id is not a torch storage reference")
    storage_type, key, location, numel = pid[1:5]
    if not isinstance(storage_type, StorageType):
        raise ModelFileError("storage reference names no storage type")
    if not isinstance(key, str) or not key or len(key) > 256:
        raise ModelFileError("storage key must be a short non-empty string")
    if not isinstance(location, str) or not _is_index(numel):
        raise ModelFileError(f"storage {quoted(key)}: malformed location or size")
    if len(pid) == 6 and pid[5] is not None:
        raise ModelFileError(f"storage {quoted(key)}: storage views (pre-1.0 torch) are not supported")
    return storage_type, key, numel
