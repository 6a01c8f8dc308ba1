def write_report(path: str, report: object) -> None:
    """Writes a bench's JSON result (making its folder) and says where."""
    import json
    from pathlib import Path

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
