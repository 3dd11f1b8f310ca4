"""The mask PRG: an AES-256-CTR keystream viewed as uint32, expanded at memory speed.

Masks are as long as the model (millions of elements) and every client expands k + 1 of them per
round, so the PRG is the hot path. AES-CTR with AES-NI runs at several GB/s; the keystream is
written by ``update_into`` straight into the output array, chunk by chunk, from one shared
read-only zero buffer, so a call allocates nothing proportional to its length.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedge.security.secagg._errors import SecAggError

_INFO = b"fedge-secagg/v1/prg"
_CHUNK = 1 << 18  #: bytes per update_into call: big enough to amortise the call, small enough for L2
_ZEROS = memoryview(bytes(_CHUNK))  # CTR encryption of zeros = the keystream itself


def prg(seed: bytes, length: int, out: np.ndarray | None = None) -> np.ndarray:
    """Expand ``seed`` into ``length`` pseudo-random uint32 (uniform mod 2^32).

    Parameters
    ----------
    seed : bytes
        At least 16 bytes of secret randomness; HKDF turns it into the AES key, so seeds of any
        origin (random self-mask seeds, ECDH-derived pair seeds) are domain-separated from other uses.
    length : int
        Number of uint32 elements.
    out : np.ndarray, optional
        A writable C-contiguous uint32 array of at least ``length`` elements to fill, so a caller
        expanding many masks reuses one buffer. Its first ``length`` elements are returned.

    Returns
    -------
    np.ndarray
        uint32 of shape ``(length,)``; a zero nonce is safe because every seed is used for one mask.
    """
    if len(seed) < 16:
        raise SecAggError(f"a {len(seed)}-byte PRG seed is too short", "use at least 16 bytes of randomness")
    if length < 0:
        raise SecAggError(f"negative PRG length {length}", "ask for length >= 0")
    if out is None:
        out = np.empty(length, dtype=np.uint32)
    elif out.dtype != np.uint32 or out.ndim != 1 or not out.flags.c_contiguous or not out.flags.writeable:
        raise SecAggError(
            "prg(out=...) must be a writable contiguous 1-D uint32 array", "allocate np.empty(n, np.uint32)"
        )
    elif out.size < length:
        raise SecAggError(f"prg(out=...) holds {out.size} elements, {length} needed", "pass a larger buffer")
    result = out[:length]
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(seed)
    encryptor = Cipher(algorithms.AES256(key), modes.CTR(bytes(16))).encryptor()
    raw = result.data.cast("B")
    for start in range(0, raw.nbytes, _CHUNK):
        stop = min(start + _CHUNK, raw.nbytes)
        encryptor.update_into(_ZEROS[: stop - start], raw[start:stop])
    return result
