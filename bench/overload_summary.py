"""What an overload run's requests became, per side: outcomes, high priority's time to first
token, each tenant's tokens and the quiet tenant's share of its fair share
(bench.vs_vllm_overload)."""

from __future__ import annotations

from collections import Counter

from bench.overload_load import OUTPUT_TOKENS, Shot

SIDES = ("vllm_server", "vllm_server_priority", "ours")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(shots: list[Shot], patience_s: float) -> dict:
    """A side's figures. A high request that never got a token within the patience counts
    with the patience as its TTFT (it waited at least that long); one refused is counted
    apart."""
    outcomes = Counter(s.status for s in shots)
    high = [s for s in shots if s.priority == "high" and s.status != "refused"]
    high_ttft = [s.first_token_s if s.first_token_s is not None else patience_s for s in high]
    tenants = {}
    for tenant in sorted({s.tenant for s in shots}):
        mine = [s for s in shots if s.tenant == tenant]
        tenants[tenant] = {
            "offered": len(mine),
            "ok": sum(s.status == "ok" for s in mine),
            "tokens": sum(s.tokens for s in mine if s.status == "ok"),
            "demand_tokens": len(mine) * OUTPUT_TOKENS,
        }
    total = sum(t["tokens"] for t in tenants.values())
    quiet = tenants.get("quiet", {"tokens": 0, "demand_tokens": 0})
    fair = min(quiet["demand_tokens"], total / max(1, len(tenants)))
    by_class = class_fair_share(shots)
    return {
        "offered": len(shots),
        "outcomes": dict(outcomes),
        "refused_with_retry_hint": sum(s.hint for s in shots if s.status == "refused"),
        "refused_by_status": dict(Counter(s.code for s in shots if s.status == "refused")),
        "errors": sorted({s.detail for s in shots if s.status == "error"})[:5],
        "high_refused": sum(s.priority == "high" and s.status == "refused" for s in shots),
        "high_ttft_s_p50": percentile(high_ttft, 0.5),
        "high_ttft_s_p99": percentile(high_ttft, 0.99),
        "tenants": tenants,
        "quiet_share_of_fair": quiet["tokens"] / fair if fair else None,
        "by_class": by_class,
        "quiet_share_of_class_fair": _ratio(by_class, "quiet"),
        "refusals": dict(Counter(s.detail[:120] for s in shots if s.status == "refused")),
    }


def class_fair_share(shots: list[Shot]) -> dict[str, dict]:
    """Per class: each tenant's tokens, its demand, and its fair share of the tokens the
    class was served (max-min fair: no tenant's share above its demand, the rest split
    evenly). A system that serves classes by priority owes a tenant fairness within each
    class; the classes' sizes are its priority's."""
    result = {}
    for priority in ("high", "medium", "low"):
        mine = [s for s in shots if s.priority == priority]
        tenants = sorted({s.tenant for s in mine})
        tokens = {
            t: sum(s.tokens for s in mine if s.tenant == t and s.status == "ok") for t in tenants
        }
        demand = {t: OUTPUT_TOKENS * sum(s.tenant == t for s in mine) for t in tenants}
        left, fair = float(sum(tokens.values())), {}
        for t in sorted(tenants, key=lambda name: demand[name]):  # water-filling
            fair[t] = min(demand[t], left / (len(tenants) - len(fair)))
            left -= fair[t]
        result[priority] = {
            t: {"tokens": tokens[t], "demand": demand[t], "fair": fair[t]} for t in tenants
        }
    return result


def _ratio(by_class: dict[str, dict], tenant: str) -> float | None:
    got = sum(c[tenant]["tokens"] for c in by_class.values() if tenant in c)
    fair = sum(c[tenant]["fair"] for c in by_class.values() if tenant in c)
    return got / fair if fair else None


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(result: dict) -> None:
    print(
        f"capacity {result['capacity_requests_per_s']:.2f} req/s (vLLM's server); offered "
        f"{result['offered_requests_per_s']:.2f} req/s for {result['seconds']:.0f} s "
        f"({result['overload']:.0f}x), patience {result['patience_s']:.0f} s"
    )
    print(
        f"{'side':>21} {'offered':>7} {'ok':>5} {'refused':>7} {'(hint)':>6} {'timeout':>7} "
        f"{'error':>5} {'high TTFT p50':>13} {'p99 s':>6} {'flood tok':>9} {'quiet tok':>9} "
        f"{'quiet/fair':>10} {'per class':>9}"
    )
    for side in SIDES:
        r = result["sides"][side]
        o = r["outcomes"]
        print(
            f"{side:>21} {r['offered']:>7} {o.get('ok', 0):>5} {o.get('refused', 0):>7} "
            f"{r['refused_with_retry_hint']:>6} {o.get('timeout', 0):>7} {o.get('error', 0):>5} "
            f"{_number(r['high_ttft_s_p50']):>13} {_number(r['high_ttft_s_p99']):>6} "
            f"{r['tenants']['flood']['tokens']:>9} {r['tenants']['quiet']['tokens']:>9} "
            f"{_number(r['quiet_share_of_fair']):>10} "
            f"{_number(r['quiet_share_of_class_fair']):>9}"
        )
    ours, theirs = result["sides"]["ours"], result["sides"]["vllm_server"]
    if ours["high_ttft_s_p99"] and theirs["high_ttft_s_p99"]:
        ratio = ours["high_ttft_s_p99"] / theirs["high_ttft_s_p99"]
        print(f"high TTFT p99, ours / vLLM's server as shipped: {ratio:.3f}")
