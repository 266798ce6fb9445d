"""Markdown tables of result rows, shared by the experiment, seed, evaluation and report writers."""

from __future__ import annotations


def dict_table_markdown(rows: list[dict]) -> str:
    """Rows of equal keys as a Markdown table (the keys are the header)."""
    if not rows:
        return "(no rows)"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[k]) for k in header) + " |" for r in rows]
    return "\n".join(lines)
