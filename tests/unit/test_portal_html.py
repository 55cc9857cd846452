"""The portal's HTML builder escapes every value that is not already Markup."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from porten.adapters.http.portal._html import Markup, escape, html, join

INJECTED = '<script>alert("x")</script>\'"&'


def test_values_are_escaped_in_text_and_attributes() -> None:
    """A script-injected value becomes inert text, in element content and in quoted attributes."""
    out = html('<p title="{v}">{v}</p>', v=INJECTED)
    assert out == (
        '<p title="&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#x27;&quot;&amp;">'
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#x27;&quot;&amp;</p>"
    )
    assert "<script" not in out


def test_markup_passes_through_once() -> None:
    """Markup from html() is not escaped again; a plain str in join() is."""
    inner = html("<b>{v}</b>", v="a&b")
    assert html("<p>{x}</p>", x=inner) == "<p><b>a&amp;b</b></p>"
    assert join([inner, "<i>"], sep="|") == "<b>a&amp;b</b>|&lt;i&gt;"
    assert isinstance(escape(inner), Markup)


@given(st.text())
def test_no_value_can_open_a_tag_or_close_an_attribute(value: str) -> None:
    """Whatever the value, the output contains no raw <, > or quote from it."""
    out = html('<a title="{v}">{v}</a>', v=value)
    inner = out.removeprefix('<a title="').removesuffix("</a>")
    assert not any(c in inner.replace('">', "", 1) for c in "<>\"'")
