"""A key's policy as a form: rendered from a :class:`KeyPolicy`, parsed back with clear errors.

Fields: a region picker (the regions the fleet knows, plus others typed in),
the minimum trust class, "My nodes only", the allowed models (none ticked:
every model) and the limits (empty: unlimited). Parsing never trusts the
browser: every value is length-checked and validated again by the keys
service before it is recorded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

from porten.adapters.http.portal._html import Markup, html, join
from porten.adapters.http.portal._web import Form
from porten.domain.state import FleetState
from porten.domain.values import TRUST_ORDER, KeyPolicy, TrustClass

MAX_REGION: Final = 64
MAX_FIELD: Final = 2000


class PolicyFormError(ValueError):
    """A field the person must fix; the message says which and how."""


def known_regions(state: FleetState, policy: KeyPolicy) -> list[str]:
    """Regions to offer as checkboxes: every node's region, and the policy's own."""
    regions = {n.region for n in state.nodes.values() if n.region} | set(policy.regions)
    return sorted(regions)


def _checked(on: bool) -> Markup:
    return Markup(" checked") if on else Markup("")


def _boxes(name: str, values: Iterable[str], chosen: frozenset[str]) -> Markup:
    return join(
        html('<label class="check"><input type="checkbox" name="{name}" value="{v}"{on}> {v}'
             '</label>', name=name, v=v, on=_checked(v in chosen))
        for v in values
    )


def _limit(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:g}"


def policy_fields(state: FleetState, policy: KeyPolicy) -> Markup:
    """The policy's fieldset, filled in with ``policy``."""
    trust = join(
        html('<option value="{t}"{sel}>{t}</option>', t=t,
             sel=Markup(" selected") if t == policy.min_trust else "")
        for t in TRUST_ORDER
    )
    models = sorted(m for m, c in state.catalog.items() if c.offered) or sorted(policy.models)
    return html(
        '<fieldset class="stack" id="policy"><legend>Policy</legend>'
        '<div><strong>Regions</strong> <span class="hint">(none ticked: any region)</span><br>'
        '{regions}<label>Other regions <input name="regions_other" id="regions-other" '
        'maxlength="{max}" placeholder="eu-west, de"></label></div>'
        '<label>Minimum trust class <select name="min_trust" id="min-trust">{trust}</select>'
        '</label>'
        '<label class="check"><input type="checkbox" name="own_nodes" id="own-nodes" value="1"'
        '{own}> My nodes only</label>'
        '<div><strong>Allowed models</strong> <span class="hint">(none ticked: every model)'
        '</span><br>{models}</div>'
        '<label>Requests per minute <input name="requests_per_min" id="rpm" inputmode="numeric" '
        'maxlength="12" value="{rpm}" placeholder="unlimited"></label>'
        '<label>Tokens per minute <input name="tokens_per_min" id="tpm" inputmode="numeric" '
        'maxlength="12" value="{tpm}" placeholder="unlimited"></label>'
        '<label>Budget (USD) <input name="budget_usd" id="budget" inputmode="decimal" '
        'maxlength="16" value="{budget}" placeholder="none"></label></fieldset>',
        regions=_boxes("regions", known_regions(state, policy), policy.regions),
        max=MAX_FIELD, trust=trust, own=_checked(policy.fleet == "own"),
        models=_boxes("models", models, policy.models),
        rpm=_limit(policy.requests_per_min), tpm=_limit(policy.tokens_per_min),
        budget=_limit(policy.budget_usd),
    )


def _whole(raw: str, label: str) -> int | None:
    text = raw.strip()
    if not text:
        return None
    if not text.isdigit() or len(text) > 12 or int(text) < 1:
        raise PolicyFormError(f"{label} must be a whole number of at least 1, or empty for "
                              "no limit.")
    return int(text)


def _budget(raw: str) -> float | None:
    text = raw.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or len(text) > 16:
        raise PolicyFormError("The budget must be an amount of at least 0, or empty for none.")
    return value


def parse_policy(form: Form, state: FleetState) -> KeyPolicy:
    """The policy the form describes."""
    if form.longest() > MAX_FIELD:
        raise PolicyFormError(f"A field is longer than {MAX_FIELD} characters.")
    typed = [r.strip() for r in form.get("regions_other", "").split(",") if r.strip()]
    regions = frozenset([*form.getall("regions"), *typed])
    if any(len(r) > MAX_REGION or " " in r or not r.isprintable() for r in regions):
        raise PolicyFormError(f"Regions are names of at most {MAX_REGION} characters without "
                              "spaces.")
    trust = form.get("min_trust", "community")
    if trust not in TRUST_ORDER:
        raise PolicyFormError("Pick a minimum trust class from the list.")
    models = frozenset(form.getall("models"))
    unknown = sorted(m for m in models if m not in state.catalog)
    if unknown:
        raise PolicyFormError(f"Unknown model: {unknown[0][:80]}.")
    min_trust: TrustClass = next(t for t in TRUST_ORDER if t == trust)
    return KeyPolicy(
        regions=regions, min_trust=min_trust,
        fleet="own" if form.get("own_nodes") == "1" else "all", models=models,
        requests_per_min=_whole(form.get("requests_per_min", ""), "Requests per minute"),
        tokens_per_min=_whole(form.get("tokens_per_min", ""), "Tokens per minute"),
        budget_usd=_budget(form.get("budget_usd", "")),
    )


def describe(policy: KeyPolicy) -> str:
    """One line a person reads in the key list."""
    parts = [
        "regions " + ", ".join(sorted(policy.regions)) if policy.regions else "any region",
        f"trust ≥ {policy.min_trust}",
    ]
    if policy.fleet == "own":
        parts.append("my nodes only")
    if policy.models:
        parts.append("models " + ", ".join(sorted(policy.models)))
    if policy.requests_per_min is not None:
        parts.append(f"{policy.requests_per_min} req/min")
    if policy.tokens_per_min is not None:
        parts.append(f"{policy.tokens_per_min} tokens/min")
    if policy.budget_usd is not None:
        parts.append(f"budget ${policy.budget_usd:g}")
    return " · ".join(parts)
