"""Reading torch pickles safely, and telling a hostile file from a damaged one.

Files are only ever unpickled by ``torch.load(weights_only=True)``, whose unpickler builds tensors and
plain containers and nothing else. When it refuses a file, the reason is read from the pickle stream with
the standard library (``zipfile``, ``pickletools``; nothing in the file is imported or called), not from the
wording of torch's exception, which changes between releases.
"""

from __future__ import annotations

import _compat_pickle
import io
import mmap
import pickle
import pickletools
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, one_line


def read_pickle(p: Path) -> Any:
    """``torch.load(p, weights_only=True)``, and when that fails, a CheckpointError saying whether the file
    is unsafe (it would import or call something) or damaged, decided from the pickle stream itself."""
    try:
        # weights_only=True: the unpickler only builds tensors and plain containers, so a hostile
        # file cannot import or call anything. There is deliberately no fallback.
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - classified below by reading the file, not the exception
        failure = e
    # Why did it fail? torch's wording changes between releases, so the answer comes from walking the
    # pickle ourselves with the standard library (nothing in it is imported or called).
    try:
        wanted = _pickle_globals(p)
    except _DamagedPickle as damage:
        raise _damaged(p, str(damage)) from None
    registered = _user_safe_globals()
    unsafe = next((name for name in wanted if not _weights_only_allows(name, registered)), None)
    if unsafe is not None:
        # builtins go by their bare names (exec, eval, getattr), as a reader knows them
        raise _refused(p, f"import and call {unsafe.removeprefix('builtins.')}") from None
    if isinstance(failure, pickle.UnpicklingError):
        # a well-formed stream that imports nothing foreign, yet the weights-only unpickler would not
        # build it: it uses an instruction beyond tensors and containers (INST, EXT, PERSID, ...)
        raise _refused(p, "use pickle instructions beyond plain tensors and containers") from None
    # the pickle is sound; what broke is elsewhere (a tensor record in the zip, its CRC, ...)
    raise _damaged(p, _torch_reason(failure)) from None


def _refused(p: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{p}: refused: unpickling this file would {what}; convnext only loads tensors "
        "(torch.load weights_only=True). Use a .safetensors copy from a source you trust, or discard the file"
    )


def _damaged(p: Path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"{p}: not a readable PyTorch checkpoint ({reason}); it is truncated or corrupt, re-download or re-export it"
    )


def _torch_reason(e: BaseException) -> str:
    # Only a fallback for files whose pickle is sound. torch's text may advise switching weights_only
    # off; that advice must never reach the user, so such a text is replaced by the exception type.
    text = one_line(e)
    return type(e).__name__ if "weights_only" in text else text


class _DamagedPickle(Exception):
    """The file is no well-formed torch checkpoint or pickle stream; the message says where it breaks."""


# The legacy (pre-1.6) torch.save format opens with this number pickled on its own, followed by the
# protocol version, system info, the object itself and its storage keys: five pickles in a row.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PICKLES = 5
_STRING_PUSHES = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
                            "SHORT_BINUNICODE", "BINUNICODE8"})
_MARK = object()  # the MARK opcode's entry on the simulated stack


def _pickle_globals(p: Path) -> list[str]:
    """Every global (``module.name``) unpickling ``p`` would import, in stream order.

    ``p`` is a torch zip checkpoint (its ``*/data.pkl`` record is read), a legacy torch file or a bare
    pickle. Raises ``_DamagedPickle`` when the container or stream is broken.
    """
    try:
        with open(p, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # a zip's local file header, as torch.save writes first
                return _zip_pickle_globals(f)
            # mapped rather than read: a legacy file may be gigabytes of storage after its pickles, and a
            # damaged length field then asks for a short read instead of a huge allocation
            stream = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (ValueError, OSError) as e:
        raise _DamagedPickle(one_line(e)) from None
    with stream:
        names, values = _walk_pickle(stream)
        if _LEGACY_MAGIC in values:
            for _ in range(_LEGACY_PICKLES - 1):
                names += _walk_pickle(stream)[0]
        return names


def _zip_pickle_globals(f) -> list[str]:
    try:
        with zipfile.ZipFile(f) as zf:
            # torch keeps every record under one top-level folder named after the file it saved
            records = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if not records:
                raise _DamagedPickle("zip archive without a data.pkl record")
            data = zf.read(records[0])  # checks the record's CRC too
    except _DamagedPickle:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, ValueError) as e:
        raise _DamagedPickle(f"broken zip archive: {one_line(e)}") from None
    with io.BytesIO(data) as stream:
        return _walk_pickle(stream)[0]


def _walk_pickle(stream) -> tuple[list[str], list[Any]]:
    """Walk one pickle from ``stream``'s position to its STOP, simulating the stack as pickletools.dis
    does, without building anything. Returns the globals it names and the long integers it pushes.

    The simulation is what tells a pickle from bytes that merely start like one: an opcode that pops
    more than was pushed, a memo read before its write or a stream ending off STOP is damage.
    """
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    names: list[str] = []
    values: list[Any] = []
    proto = 0
    try:
        for op, arg, pos in pickletools.genops(stream):
            before = op.stack_before
            if pickletools.markobject in before:
                marks = [i for i, v in enumerate(stack) if v is _MARK]
                if not marks:
                    raise _DamagedPickle(f"{op.name} without a MARK at byte {pos}")
                del stack[marks[-1]:]
                before = before[:before.index(pickletools.markobject)]
            if len(stack) < len(before):
                raise _DamagedPickle(f"{op.name} pops from an empty stack at byte {pos}")
            popped = stack[len(stack) - len(before):]
            del stack[len(stack) - len(before):]
            pushed: Any = None
            if op.name == "PROTO":
                proto = arg
            elif op.name in ("GLOBAL", "INST"):
                names.append(_global_name(*arg.split(" ", 1), proto))  # genops gives "module name"
            elif op.name == "STACK_GLOBAL":
                # protocol 4+: module and name are the two strings pushed (or fetched from the memo)
                # just before; anything else is computed while unpickling and names no safe global
                module, name = popped
                ok = isinstance(module, str) and isinstance(name, str)
                names.append(_global_name(module, name, proto) if ok else "a global computed while unpickling")
            elif op.name.startswith("EXT"):
                names.append(f"the copyreg extension {arg}")
            elif op.name in _STRING_PUSHES:
                pushed = arg
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise _DamagedPickle(f"{op.name} of an unset memo entry at byte {pos}")
                pushed = memo[arg]
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "DUP"):
                # they keep the top of the stack; MEMOIZE and DUP pop it and push it back (DUP twice)
                top = popped or stack[-1:]
                if not top:
                    raise _DamagedPickle(f"{op.name} on an empty stack at byte {pos}")
                pushed = top[-1]
                if op.name != "DUP":
                    memo[len(memo) if op.name == "MEMOIZE" else arg] = pushed
            elif op.name == "MARK":
                pushed = _MARK
            elif op.name in ("LONG", "LONG1", "LONG4"):
                values.append(arg)  # where the legacy format's magic number shows up
            stack += [pushed] * len(op.stack_after)
            if op.name == "STOP" and stack:
                raise _DamagedPickle(f"{len(stack)} object(s) left over at STOP, byte {pos}")
    except _DamagedPickle:
        raise
    except (ValueError, EOFError, OverflowError, MemoryError) as e:  # genops: unknown opcode, short read
        raise _DamagedPickle(f"broken pickle stream: {one_line(e)}") from None
    return names, values


def _global_name(module: str, name: str, proto: int) -> str:
    # Protocols 0-2 spell globals the Python 2 way (__builtin__.set, copy_reg._reconstructor); the
    # unpickler translates them with these tables, so the translated name is what would be imported.
    if proto < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


# The globals torch.save writes for tensors, parameters and containers, all of which the weights-only
# unpickler builds; with the rule in _weights_only_allows this mirrors torch's own allow-list.
_WEIGHTS_ONLY_GLOBALS = frozenset({
    "collections.OrderedDict", "collections.Counter", "builtins.set", "builtins.complex", "builtins.bytearray",
    "_codecs.encode", "torch.Size", "torch.Tensor", "torch.device", "torch.nn.parameter.Parameter",
    "torch.serialization._get_layout", "torch._tensor._rebuild_from_type_v2", "torch.storage.TypedStorage",
    "torch.storage.UntypedStorage",
})
_TENSOR_TYPE_MODULES = ("torch", "torch.cuda", "torch.sparse", "torch.cuda.sparse")


def _weights_only_allows(name: str, registered: set[str]) -> bool:
    """Whether torch's weights-only unpickler builds the global ``name`` (``module.attr``), given the
    names the process ``registered`` as safe."""
    if name in _WEIGHTS_ONLY_GLOBALS or name in registered:
        return True
    module, _, attr = name.rpartition(".")
    if module == "torch._utils":
        return attr.startswith("_rebuild_")  # the tensor rebuild functions
    if module in _TENSOR_TYPE_MODULES:
        # dtypes, quantisation schemes and the legacy FloatStorage/FloatTensor-style classes; looked up
        # in the namespace of modules torch has already imported (not getattr, which may import lazily),
        # so the check itself imports nothing
        obj = vars(sys.modules[module]).get(attr) if module in sys.modules else None
        return isinstance(obj, (torch.dtype, torch.qscheme)) or (
            isinstance(obj, type) and attr.endswith(("Storage", "Tensor")))
    return False


def _user_safe_globals() -> set[str]:
    # what the process registered with torch.serialization.add_safe_globals (torch >= 2.5), entries
    # being objects or (object, "module.name") pairs
    get = getattr(torch.serialization, "get_safe_globals", None)
    out = set()
    for entry in get() if get else ():
        if isinstance(entry, tuple):
            out.add(entry[1])
        else:
            out.add(f"{getattr(entry, '__module__', '')}.{getattr(entry, '__name__', '')}")
    return out


__all__ = ["read_pickle"]
