"""Transactions: the frozen type, its canonical bytes, its id and its wire form.

Canonical body (all integers big-endian):
    u8 len | sender (ASCII)    u8 len | recipient (ASCII)
    u64 amount    u64 fee    u64 nonce
    u8 len | sender public key (32 bytes; empty in a coinbase)
Full bytes = body | u8 len | signature (64 bytes; empty in a coinbase).
txid = SHA-256(full bytes). The signature covers network_id (32 bytes) | body.
"""

from __future__ import annotations

import struct
from typing import Any

from p2pchain import limits
from p2pchain.digests import sha256
from p2pchain.errors import ProtocolError
from p2pchain.keys import COINBASE_SENDER, Wallet
from p2pchain.ledger import cached
from p2pchain.record import record

_U64 = struct.Struct(">QQQ")
_PAYMENT = struct.Struct(">B40sB40sQQQB32sB64s")  # the full bytes of a payment (40-char addresses, key, signature)
_COINBASE = struct.Struct(">B1sB40sQQQBB")  # ... of a coinbase (sender "0", a 40-char address, no key, no signature)
_U64_END = 2**64  # amount, fee and nonce are below it
WireTx = list[Any]  # [sender, recipient, amount, fee, nonce, pubkey, signature]
_WIRE_TYPES = (str, str, int, int, int, bytes, bytes)  # each field's exact type (bool is no int here)


@record
class Tx:
    sender: str  # 40-hex address, or "0" for the coinbase
    recipient: str  # 40-hex address
    amount: int  # coins moved, > 0 (the coinbase: reward + fees)
    fee: int  # coins to the miner, >= 0 (0 in a coinbase)
    nonce: int  # the sender's counter: 0 for its first transaction (a coinbase: the height)
    pubkey: bytes  # the sender's raw Ed25519 key (empty in a coinbase)
    signature: bytes  # Ed25519 over network_id | body (empty in a coinbase)

    @property
    def is_coinbase(self) -> bool:
        return self.sender == COINBASE_SENDER

    @cached
    def body(self) -> bytes:
        if "raw" in self.__dict__:  # (a payment's body is the first _PAYMENT_BODY bytes of its raw)
            raw: bytes = self.__dict__["raw"]
            return raw[: len(raw) - 1 - len(self.signature)]
        s = self.sender.encode("ascii")
        r = self.recipient.encode("ascii")
        pubkey = self.pubkey
        # %c of an int is that one byte (a length: each field is at most 255 bytes, from_wire checks)
        amounts = _U64.pack(self.amount, self.fee, self.nonce)
        return b"%c%s%c%s%s%c%s" % (len(s), s, len(r), r, amounts, len(pubkey), pubkey)

    @cached
    def raw(self) -> bytes:
        if "body" not in self.__dict__:  # the usual shapes, all of it in one pack (a third of the cost of the txid)
            packed = _packed(
                self.sender, self.recipient, self.amount, self.fee, self.nonce, self.pubkey, self.signature
            )
            if packed is not None:
                return packed
        return self.body + bytes((len(self.signature),)) + self.signature

    @cached
    def txid(self) -> bytes:
        return sha256(self.raw).digest()

    @property
    def size(self) -> int:
        return len(self.raw)

    @staticmethod
    def wire_size(obj: WireTx) -> int:
        """``Tx.from_wire(obj).size`` of a well-formed wire array (a stored one), without building
        the transaction: the length bytes and the 24 bytes of amount, fee and nonce, plus the four
        variable fields (the addresses are ASCII: one byte a character)."""
        return 28 + len(obj[0]) + len(obj[1]) + len(obj[5]) + len(obj[6])

    def signing_message(self, network_id: bytes) -> bytes:
        return network_id + self.body

    def to_wire(self) -> WireTx:
        return [self.sender, self.recipient, self.amount, self.fee, self.nonce, self.pubkey, self.signature]

    @classmethod
    def from_wire(cls, obj: object) -> Tx:
        """Build from the wire's array form, checking types and ranges; ProtocolError if malformed."""
        if type(obj) is list and len(obj) == 7:  # the usual case, checked in one expression
            sender, recipient, amount, fee, nonce, pubkey, signature = obj
            if (
                tuple(map(type, obj)) == _WIRE_TYPES  # (in C: seven type tests in Python were a quarter of this)
                and 0 < len(sender) <= limits.MAX_ADDRESS_CHARS
                and 0 < len(recipient) <= limits.MAX_ADDRESS_CHARS
                and sender.isascii()
                and recipient.isascii()
                and 0 <= amount < _U64_END
                and 0 <= fee < _U64_END
                and 0 <= nonce < _U64_END
                and len(pubkey) <= 255
                and len(signature) <= 255
            ):
                tx = cls(sender, recipient, amount, fee, nonce, pubkey, signature)
                # the canonical bytes and the txid, always read next (a block's merkle root, a
                # relayed transaction's seen-check), made here from the fields at hand
                raw = _packed(sender, recipient, amount, fee, nonce, pubkey, signature)
                if raw is not None:
                    tx.__dict__.update(raw=raw, txid=sha256(raw).digest())  # (as ``raw`` and ``txid``)
                return tx
        if not isinstance(obj, (list, tuple)) or len(obj) != 7:
            raise ProtocolError("transaction must be an array of 7 fields")
        sender, recipient, amount, fee, nonce, pubkey, signature = obj
        for name, text in (("sender", sender), ("recipient", recipient)):
            if not isinstance(text, str) or not 0 < len(text) <= limits.MAX_ADDRESS_CHARS or not text.isascii():
                raise ProtocolError(f"transaction {name} must be an ASCII string of 1..{limits.MAX_ADDRESS_CHARS}")
        for name, value in (("amount", amount), ("fee", fee), ("nonce", nonce)):
            if type(value) is not int or not 0 <= value < 2**64:
                raise ProtocolError(f"transaction {name} must be an unsigned 64-bit integer")
        for name, blob in (("pubkey", pubkey), ("signature", signature)):
            if not isinstance(blob, bytes) or len(blob) > 255:
                raise ProtocolError(f"transaction {name} must be binary of at most 255 bytes")
        return cls(sender, recipient, amount, fee, nonce, pubkey, signature)


def _packed(
    sender: str, recipient: str, amount: int, fee: int, nonce: int, pubkey: bytes, signature: bytes
) -> bytes | None:
    """A transaction's full bytes in one struct pack for its two usual shapes (a payment: 40-char
    addresses, a 32-byte key, a 64-byte signature; a coinbase: sender "0", no key, no signature),
    else None. The addresses are ASCII (from_wire checks), so a character is a byte."""
    if len(recipient) != 40:
        return None
    if len(sender) == 40 and len(pubkey) == 32 and len(signature) == 64:
        return _PAYMENT.pack(
            40, sender.encode("ascii"), 40, recipient.encode("ascii"), amount, fee, nonce, 32, pubkey, 64, signature
        )
    if len(sender) == 1 and not pubkey and not signature:
        return _COINBASE.pack(1, sender.encode("ascii"), 40, recipient.encode("ascii"), amount, fee, nonce, 0, 0)
    return None


def make_tx(wallet: Wallet, recipient: str, amount: int, fee: int, nonce: int, network_id: bytes) -> Tx:
    """A transaction from ``wallet``, signed for ``network_id``."""
    unsigned = Tx(wallet.address, recipient, amount, fee, nonce, wallet.pubkey, b"")
    sig = wallet.sign(unsigned.signing_message(network_id))
    return Tx(wallet.address, recipient, amount, fee, nonce, wallet.pubkey, sig)


def make_coinbase(recipient: str, amount: int, height: int) -> Tx:
    """The block's first transaction: pays reward + fees; its nonce is the height (unique ids)."""
    return Tx(COINBASE_SENDER, recipient, amount, 0, height, b"", b"")
