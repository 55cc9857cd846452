"""HTML that is safe by construction: every value is escaped unless it is already :class:`Markup`.

Pages are built from trusted templates (string literals in this package)
and untrusted values (model ids, key names, emails, anything from a form or
the log). :func:`html` escapes each value it is given, so a value such as
``<script>alert(1)</script>`` renders as that text and never runs; only
other ``Markup`` — the output of :func:`html` itself — passes through
as-is. There is no other way to put a value into a page, which is what
makes "escaped everywhere" something the code holds rather than hopes.
"""

from __future__ import annotations

import html as _stdlib_html
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote


class Markup(str):
    """Text that is already safe HTML (made by :func:`html` or :func:`join`)."""

    __slots__ = ()


def escape(value: object) -> Markup:
    """``value`` as HTML text: ``& < > " '`` escaped, unless it is already Markup."""
    if isinstance(value, Markup):
        return value
    return Markup(_stdlib_html.escape(str(value), quote=True))


def html(template: str, /, **values: Any) -> Markup:
    """``template`` (trusted) with ``{name}`` fields filled by escaped ``values``.

    Templates never contain inline script or style (the CSP forbids both), and
    attribute values in them are always double-quoted.
    """
    return Markup(template.format(**{k: escape(v) for k, v in values.items()}))


def join(parts: Iterable[Markup], sep: str = "") -> Markup:
    """Concatenate Markup (a plain ``str`` in ``parts`` is escaped)."""
    return Markup(escape(sep).join(escape(p) for p in parts))


def query_value(value: str) -> str:
    """``value`` percent-encoded for a URL's query string (then escaped by :func:`html`)."""
    return quote(value, safe="")
