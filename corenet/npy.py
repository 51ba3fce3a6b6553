"""The header of one .npy member of a zip archive (a model file, an .npz dataset),
read before any of its data, so that its declared shape can be checked first."""
from __future__ import annotations

import tokenize
import zipfile
import zlib

import numpy as np

MAX_HEADER_BYTES = 10_000  # numpy's own default bound for an untrusted header

# What reading an archive member can raise on a malformed file (a wrong CRC only at
# the end of a member; deep or hostile headers as ValueError, RecursionError...; an
# unclosed bracket as TokenError, from the tokenizer numpy retries old headers with).
READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, TypeError,
               NotImplementedError, RecursionError, OverflowError, KeyError,
               tokenize.TokenError)


def read_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple:
    """(shape, fortran_order, dtype, data_offset) of member ``info``; raises one of
    READ_ERRORS when it has no readable .npy header."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read(member, max_header_size=MAX_HEADER_BYTES)
        return shape, fortran_order, dtype, member.tell()
