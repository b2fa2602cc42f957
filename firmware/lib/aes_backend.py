"""One AES block at a time (ECB), for the hand-written AES-CCM in bthome.py.

``ecb(key)`` returns an object whose ``encrypt(block)`` takes 16 bytes and returns 16 bytes.
Under MicroPython it is ``cryptolib.aes(key, 1)`` (mode 1 is ECB, in every port that has
``cryptolib``, the ESP32 included); under CPython, where the simulator and the tests run the same
firmware code, it is ``cryptography``'s AES in ECB mode. The import is chosen when the module loads.
Nothing else of AES is needed: CTR and CBC-MAC are built on the block function in bthome.py.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class BlockCipher(Protocol):
        def encrypt(self, __block: bytes) -> bytes: ...  # (a positional-only parameter)


try:
    from cryptolib import aes as _aes  # MicroPython

    def ecb(key: bytes) -> "BlockCipher":
        return _aes(key, 1)  # 1: MODE_ECB (the constant is missing from some builds)

except ImportError:  # CPython
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    class _Ecb:
        def __init__(self, key: bytes) -> None:
            self._encryptor = Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()

        def encrypt(self, block: bytes) -> bytes:
            if len(block) != 16:
                raise ValueError("AES-ECB encrypts 16-byte blocks")
            return self._encryptor.update(bytes(block))

    def ecb(key: bytes) -> "BlockCipher":
        return _Ecb(key)
