"""Fleet state to bytes and back, for snapshots that keep restarts short.

``STATE_SCHEMA`` names the shape of :class:`FleetState`; bump it whenever that
shape changes, and old snapshots are ignored (the hub folds the full log
instead) rather than decoded into a state that never existed.
"""

from __future__ import annotations

import typing
from typing import Any, Final

import immutables
import msgspec

from porten.domain.state import FleetState

#: 2: accounts; 3: enrolment grants and tokens; 4: placements gained ``draining`` /
#: ``drained_for``. A snapshot of another schema is ignored and the log refolded.
STATE_SCHEMA: Final = 4


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, immutables.Map):
        return dict(obj)
    raise NotImplementedError(f"cannot snapshot a {type(obj).__name__}")


def _dec_hook(type_: Any, obj: Any) -> Any:
    if typing.get_origin(type_) is immutables.Map:
        key_type, value_type = typing.get_args(type_)
        plain: Any = dict[key_type, value_type]  # type: ignore[valid-type]
        return immutables.Map(msgspec.convert(obj, plain, dec_hook=_dec_hook))
    raise NotImplementedError(f"cannot restore a {type_!r}")


_ENCODER: Final = msgspec.msgpack.Encoder(enc_hook=_enc_hook, order="deterministic")
_DECODER: Final = msgspec.msgpack.Decoder(FleetState, dec_hook=_dec_hook)


def encode_state(state: FleetState) -> bytes:
    """MessagePack bytes for ``state`` (deterministic: equal states give equal bytes)."""
    return _ENCODER.encode(state)


def decode_state(data: bytes) -> FleetState:
    """The state :func:`encode_state` wrote; raises ``msgspec.DecodeError`` if it cannot."""
    return _DECODER.decode(data)
