"""The allow-list of label-map files: self-contained files of known formats, checked from their raw header bytes.

Every label map that flare-eval reads (predictions, ground truth, container
inputs) passes `inspect_label_file` first; only then may nibabel or SimpleITK
parse it, and they parse the very file that was checked (see
`open_checked`). What is accepted:

===========================  ==================================================
format                       accepted when
===========================  ==================================================
NIfTI-1 / NIfTI-2            single file (magic ``n+1`` / ``n+2``), not a
(``.nii``, ``.nii.gz``)      ``.hdr``/``.img`` pair; extensions of at most
                             `MAX_EXTENSION_BYTES`
MetaImage (``.mha``,         ``ElementDataFile = LOCAL``: the data follows the
``.mhd``)                    header in the same file
NRRD (``.nrrd``)             attached data: no ``data file`` field
every format                 a regular file (not a link, device or pipe), a
                             header of at most `MAX_TEXT_HEADER_BYTES` that
                             this module parses itself, 1 to 4 dimensions of
                             positive size, one value per voxel, an integer or
                             real voxel type
===========================  ==================================================

Why: SimpleITK follows a MetaImage ``ElementDataFile`` or an NRRD ``data file``
anywhere on the machine (the ground truth, another team's prediction,
``/dev/stdin``), and loops forever on some malformed headers; nibabel
allocates every extension byte a NIfTI header announces. None of that can be
bounded once a library has the file, so the decision is taken here, by a
parser that reads a bounded prefix and nothing else. Pure: bytes in, facts
out; it never imports an imaging library.
"""

from __future__ import annotations

import gzip
import os
import stat
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import FlareEvalError

__all__ = [
    "LabelFileFacts",
    "RefusedFileError",
    "inspect_label_file",
    "open_checked",
    "MAX_TEXT_HEADER_BYTES",
    "MAX_EXTENSION_BYTES",
    "FORMAT_SUFFIXES",
]

#: Longest MetaImage or NRRD header read (real ones hold a few hundred bytes).
MAX_TEXT_HEADER_BYTES = 64 * 1024
#: Most bytes of NIfTI extensions between the fixed header and the data.
MAX_EXTENSION_BYTES = 64 * 1024
#: Most fields of a MetaImage or NRRD header.
_MAX_FIELDS = 200
_MAX_DIMENSIONS = 4

FORMAT_SUFFIXES = {".nii.gz": "nifti", ".nii": "nifti", ".mha": "metaimage", ".mhd": "metaimage", ".nrrd": "nrrd"}


class RefusedFileError(FlareEvalError, ValueError):
    """A file that is not a self-contained label map of an accepted format; the message says why."""


@dataclass(frozen=True)
class LabelFileFacts:
    """What a checked file's own header says.

    Attributes
    ----------
    format : {"nifti1", "nifti2", "metaimage", "nrrd"}
    shape : tuple of int
        Voxels along each axis, as stored (a trailing axis of length 1 is kept).
    dtype : numpy.dtype
        The stored voxel type.
    compressed : bool
        Whether the data is compressed (gzip file or compressed encoding).
    """

    format: str
    shape: tuple[int, ...]
    dtype: np.dtype
    compressed: bool


def _format_of(path: Path) -> str:
    for suffix, name in FORMAT_SUFFIXES.items():
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return name
    raise RefusedFileError(f"not a label map; expected one of {tuple(FORMAT_SUFFIXES)}")


def open_checked(path: str | Path) -> int:
    """Open a regular file for reading without following a link; return the descriptor.

    The file is checked with ``lstat`` before it is opened (a pipe or device
    would block or never end) and the opened descriptor is checked to be that
    same file.

    Raises
    ------
    RefusedFileError
        If ``path`` is a symbolic link, not a regular file, empty, or changed
        between the check and the opening.
    FileNotFoundError
        If it does not exist.
    """
    path = Path(path)
    before = os.lstat(path)
    if stat.S_ISLNK(before.st_mode):
        raise RefusedFileError("a symbolic link, not a file (predictions must be self-contained files)")
    if not stat.S_ISREG(before.st_mode):
        raise RefusedFileError("not a regular file")
    if before.st_size == 0:
        raise RefusedFileError("file is empty")
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    after = os.fstat(descriptor)
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino) or not stat.S_ISREG(after.st_mode):
        os.close(descriptor)
        raise RefusedFileError("the file changed while it was opened")
    return descriptor


def inspect_label_file(path: str | Path, descriptor: int | None = None) -> LabelFileFacts:
    """Check that a file is a self-contained label map of an accepted format and read its header.

    Parameters
    ----------
    path : str or Path
        The file; its name gives the format.
    descriptor : int, optional
        An open descriptor of ``path`` (from `open_checked`); read from its
        start without moving its offset. Opened and closed here when omitted.

    Returns
    -------
    LabelFileFacts

    Raises
    ------
    RefusedFileError
        With the reason: a link or special file, an unknown format, a detached
        or pair header, data outside the file, a header too long or malformed,
        or a voxel type that cannot hold labels. The message does not repeat
        the path; callers prefix it.
    FileNotFoundError
        If the file does not exist.
    """
    path = Path(path)
    kind = _format_of(path)
    own = descriptor is None
    if own:
        descriptor = open_checked(path)
    try:
        with os.fdopen(os.dup(descriptor), "rb") as handle:
            handle.seek(0)
            magic = handle.read(2)
            handle.seek(0)
            is_gzip = magic == b"\x1f\x8b"
            if kind == "nifti":
                if path.name.endswith(".gz") != is_gzip:
                    raise RefusedFileError("name ends in .gz but the file is not gzip-compressed" if not is_gzip else
                                           "file is gzip-compressed but its name does not end in .gz")
                facts = _nifti_facts(_bounded_prefix(handle, is_gzip, 540 + MAX_EXTENSION_BYTES))
                return replace(facts, compressed=is_gzip)
            if is_gzip:
                raise RefusedFileError(f"a gzip file is not a {kind} file; compress inside the format instead")
            text = handle.read(MAX_TEXT_HEADER_BYTES)
    finally:
        if own:
            os.close(descriptor)
    return _metaimage_facts(text) if kind == "metaimage" else _nrrd_facts(text)


def _bounded_prefix(handle, is_gzip: bool, n_bytes: int) -> bytes:
    if not is_gzip:
        return handle.read(n_bytes)
    try:
        with gzip.GzipFile(fileobj=handle, mode="rb") as stream:
            return stream.read(n_bytes)
    except (OSError, EOFError, zlib.error) as exc:
        raise RefusedFileError(f"corrupt gzip data ({exc})") from exc


# --- NIfTI -------------------------------------------------------------------------------------------------

_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
                 1280: "u8"}


def _nifti_facts(prefix: bytes) -> LabelFileFacts:
    if len(prefix) < 348:
        raise RefusedFileError(f"a NIfTI header takes 348 bytes, the file holds {len(prefix)}")
    for order in "<>":
        size = struct.unpack_from(order + "i", prefix, 0)[0]
        if size in (348, 540):
            break
    else:
        raise RefusedFileError("not a NIfTI-1 or NIfTI-2 header (sizeof_hdr is neither 348 nor 540)")
    if size == 348:
        magic = prefix[344:348]
        if magic[:3] == b"ni1":
            raise RefusedFileError("a NIfTI header of a .hdr/.img pair: its data lies in another file")
        if magic != b"n+1\0":
            raise RefusedFileError(f"NIfTI-1 magic {magic!r} is not that of a single file (n+1)")
        dims = struct.unpack_from(order + "8h", prefix, 40)
        datatype = struct.unpack_from(order + "h", prefix, 70)[0]
        vox_offset = struct.unpack_from(order + "f", prefix, 108)[0]
    else:
        if len(prefix) < 540:
            raise RefusedFileError(f"a NIfTI-2 header takes 540 bytes, the file holds {len(prefix)}")
        magic = prefix[4:12]
        if magic[:3] == b"ni2":
            raise RefusedFileError("a NIfTI-2 header of a .hdr/.img pair: its data lies in another file")
        if magic[:4] != b"n+2\0":
            raise RefusedFileError(f"NIfTI-2 magic {magic!r} is not that of a single file (n+2)")
        datatype = struct.unpack_from(order + "h", prefix, 12)[0]
        dims = struct.unpack_from(order + "8q", prefix, 16)
        vox_offset = struct.unpack_from(order + "q", prefix, 168)[0]
    if not np.isfinite(vox_offset) or vox_offset < size:
        raise RefusedFileError(f"NIfTI vox_offset {vox_offset} points inside the header")
    if vox_offset - size > MAX_EXTENSION_BYTES:
        raise RefusedFileError(f"NIfTI extensions of {int(vox_offset - size)} bytes, more than the "
                               f"{MAX_EXTENSION_BYTES} accepted")
    _check_nifti_extensions(prefix, size, int(vox_offset), order)
    n_dims = dims[0]
    if not 1 <= n_dims <= 7:
        raise RefusedFileError(f"NIfTI dim[0] = {n_dims}: not a number of dimensions")
    shape = tuple(int(n) for n in dims[1:1 + n_dims])
    if datatype not in _NIFTI_DTYPES:
        raise RefusedFileError(f"NIfTI datatype {datatype} cannot hold labels (integers or reals only)")
    return LabelFileFacts(f"nifti{1 if size == 348 else 2}", _checked_shape(shape), np.dtype(_NIFTI_DTYPES[datatype]),
                          compressed=False)


def _check_nifti_extensions(prefix: bytes, header_size: int, vox_offset: int, order: str) -> None:
    """Every extension must lie between the header and the data: nibabel reads each one's own size blindly."""
    if len(prefix) < vox_offset:
        raise RefusedFileError(f"NIfTI data should start at byte {vox_offset}, the file is shorter")
    if vox_offset < header_size + 4 or prefix[header_size] == 0:
        return  # no extensions
    position = header_size + 4
    while vox_offset - position >= 16:
        esize = struct.unpack_from(order + "i", prefix, position)[0]
        if esize < 16 or esize % 16 or position + esize > vox_offset:
            raise RefusedFileError(f"NIfTI extension at byte {position} claims {esize} bytes, which do not fit "
                                   f"between the header and the data (byte {vox_offset})")
        position += esize


def _checked_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if not 1 <= len(shape) <= _MAX_DIMENSIONS:
        raise RefusedFileError(f"{len(shape)} dimensions {shape}; label maps have 3")
    if any(n <= 0 for n in shape):
        raise RefusedFileError(f"header claims a size of {shape}: every size must be positive")
    return shape


# --- MetaImage ---------------------------------------------------------------------------------------------

_META_DTYPES = {"MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_USHORT": "u2", "MET_SHORT": "i2", "MET_UINT": "u4",
                "MET_INT": "i4", "MET_ULONG": "u4", "MET_LONG": "i4", "MET_ULONG_LONG": "u8", "MET_LONG_LONG": "i8",
                "MET_FLOAT": "f4", "MET_DOUBLE": "f8"}


def _header_lines(text: bytes, ends_at) -> tuple[list[str], bool]:
    """The header's lines up to the one for which ``ends_at(line)`` holds (inclusive), and whether it was found."""
    lines = []
    for raw in text.split(b"\n")[:-1]:  # the last piece may be cut by the bound
        try:
            line = raw.decode("ascii").rstrip("\r")
        except UnicodeDecodeError as exc:
            raise RefusedFileError("header holds bytes that are not ASCII text") from exc
        lines.append(line)
        if len(lines) > _MAX_FIELDS:
            raise RefusedFileError(f"header has more than {_MAX_FIELDS} lines")
        if ends_at(line):
            return lines, True
    return lines, False


_META_KEYS = ("ElementDataFile", "NDims", "DimSize", "ElementNumberOfChannels", "ElementType", "CompressedData")


def _metaimage_facts(text: bytes) -> LabelFileFacts:
    lines, found = _header_lines(text, lambda line: line.split("=", 1)[0].strip().lower() == "elementdatafile")
    if not found:
        raise RefusedFileError(f"no ElementDataFile field in the first {MAX_TEXT_HEADER_BYTES} bytes of the header")
    fields: dict[str, str] = {}
    seen: set[str] = set()
    known = {key.lower(): key for key in _META_KEYS}
    for line in lines:
        if not line.strip():
            continue
        key, equals, value = line.partition("=")
        key = key.strip()
        if not equals or not key:
            raise RefusedFileError(f"MetaImage header line {line[:60]!r} is not 'Key = Value'")
        if key.lower() in seen:
            raise RefusedFileError(f"MetaImage header field {key!r} appears twice")
        seen.add(key.lower())
        # SimpleITK matches field names exactly: a variant spelling would be read differently here and there.
        if key.lower() in known and key != known[key.lower()]:
            raise RefusedFileError(f"MetaImage header field {key!r} should be spelt {known[key.lower()]!r}")
        fields[key] = value.strip()
    data_file = fields["ElementDataFile"]
    if data_file not in ("LOCAL", "Local", "local"):
        raise RefusedFileError(f"MetaImage data lies outside the file (ElementDataFile = {data_file[:80]!r}); "
                               "only ElementDataFile = LOCAL (a single .mha file) is accepted")
    sizes = _shape_fields(fields, "MetaImage", "NDims", "DimSize")
    channels = _integer(fields.get("ElementNumberOfChannels", "1"), "ElementNumberOfChannels")
    if channels != 1:
        raise RefusedFileError(f"label maps hold one value per voxel, this file holds {channels}")
    element = fields.get("ElementType", "")
    if element not in _META_DTYPES:
        raise RefusedFileError(f"MetaImage ElementType {element[:40]!r} cannot hold labels")
    compressed = fields.get("CompressedData", "False").lower() == "true"
    return LabelFileFacts("metaimage", _checked_shape(tuple(sizes)), np.dtype(_META_DTYPES[element]), compressed)


def _shape_fields(fields: dict[str, str], kind: str, dimension_key: str, sizes_key: str) -> list[int]:
    """The sizes a text header gives: a count of dimensions that label maps can have, and that many sizes."""
    n_dims = _integer(fields.get(dimension_key), dimension_key)
    if not 1 <= n_dims <= _MAX_DIMENSIONS:
        raise RefusedFileError(f"{kind} {dimension_key} = {n_dims}; label maps have 3")
    sizes = _integers(fields.get(sizes_key), sizes_key)
    if len(sizes) != n_dims:
        raise RefusedFileError(f"{kind} {sizes_key} {sizes} does not give {dimension_key} = {n_dims} values")
    return sizes


def _integer(value: str | None, name: str) -> int:
    numbers = _integers(value, name)
    if len(numbers) != 1:
        raise RefusedFileError(f"header field {name} = {value!r} is not one integer")
    return numbers[0]


def _integers(value: str | None, name: str) -> list[int]:
    if value is None:
        raise RefusedFileError(f"header has no {name} field")
    try:
        numbers = [int(item) for item in value.split()]
    except ValueError as exc:
        raise RefusedFileError(f"header field {name} = {value[:60]!r} is not a list of integers") from exc
    if any(abs(n) > 2**40 for n in numbers):
        raise RefusedFileError(f"header field {name} = {value[:60]!r} holds an impossible size")
    return numbers


# --- NRRD --------------------------------------------------------------------------------------------------

_NRRD_DTYPES = {
    "u1": ("uchar", "unsigned char", "uint8", "uint8_t"),
    "i1": ("signed char", "int8", "int8_t"),
    "i2": ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    "u2": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    "i4": ("int", "signed int", "int32", "int32_t"),
    "u4": ("uint", "unsigned int", "uint32", "uint32_t"),
    "i8": ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"),
    "u8": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    "f4": ("float",),
    "f8": ("double",),
}
_NRRD_TYPE = {name: code for code, names in _NRRD_DTYPES.items() for name in names}
_NRRD_ENCODINGS = {"raw": False, "gzip": True, "gz": True, "bzip2": True, "bz2": True}


def _nrrd_facts(text: bytes) -> LabelFileFacts:
    if not text.startswith(b"NRRD000"):
        raise RefusedFileError("not an NRRD file (no NRRD000x magic)")
    lines, found = _header_lines(text, lambda line: line == "")
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() in ("data file", "datafile") and not value.startswith("="):
            raise RefusedFileError(f"NRRD data lies outside the file ({line[:80]!r}); only attached data (a single "
                                   ".nrrd file) is accepted")
    fields: dict[str, str] = {}
    for line in lines[1:-1] if found else lines[1:]:
        if line.startswith("#") or ":=" in line.partition(": ")[0]:
            continue  # comments and key/value pairs carry no geometry or data location
        key, colon, value = line.partition(": ")
        key = key.strip().lower()
        if not colon:
            raise RefusedFileError(f"NRRD header line {line[:60]!r} is not 'field: value'")
        if key in fields:
            raise RefusedFileError(f"NRRD header field {key!r} appears twice")
        fields[key] = value.strip()
    if not found:
        raise RefusedFileError(f"no attached data: the header does not end within {MAX_TEXT_HEADER_BYTES} bytes "
                               "(a detached .nhdr header is not accepted)")
    sizes = _shape_fields(fields, "NRRD", "dimension", "sizes")
    type_name = fields.get("type", "")
    if type_name not in _NRRD_TYPE:
        raise RefusedFileError(f"NRRD type {type_name[:40]!r} cannot hold labels")
    encoding = fields.get("encoding", "")
    if encoding not in _NRRD_ENCODINGS:
        raise RefusedFileError(f"NRRD encoding {encoding[:40]!r} is not accepted (raw, gzip or bzip2)")
    for skip in ("byte skip", "byteskip", "line skip", "lineskip"):
        if skip in fields and _integer(fields[skip], skip) != 0:
            raise RefusedFileError(f"NRRD {skip} {fields[skip]!r}: attached data starts right after the header")
    dtype = np.dtype(_NRRD_TYPE[type_name])
    if dtype.itemsize > 1:
        endian = fields.get("endian", "")
        if endian not in ("little", "big"):
            raise RefusedFileError(f"NRRD endian {endian[:20]!r} is neither little nor big")
    return LabelFileFacts("nrrd", _checked_shape(tuple(sizes)), dtype, _NRRD_ENCODINGS[encoding])

