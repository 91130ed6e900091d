"""Self-contained HTML reports: matplotlib figures embedded as PNGs, tables, sections that
put a published claim beside what the model under study shows, and an atomic page write."""

import base64
import html
import io
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["STYLE", "png", "html_table", "html_section", "write_page"]

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222 }
h1 { font-size: 1.6em } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em }
table { border-collapse: collapse; margin: .6em 0 } td, th { border: 1px solid #ccc;
padding: .25em .6em; text-align: right } th { background: #f3f3f3 }
.claim { background: #f7f7ff; border-left: 4px solid #88a; padding: .4em .8em; margin: .6em 0 }
.ours { background: #f7fff7; border-left: 4px solid #8a8; padding: .4em .8em; margin: .6em 0 }
img { max-width: 100%; }
"""


def png(fig) -> str:
    """The figure as an embedded `<img>` (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return (
        f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'
    )


def html_table(header: list[str], rows: list[list]) -> str:
    """A table; floats are shown with 3 significant digits, everything else escaped."""

    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def html_section(
    title: str, claim: str, ours: str, *parts: str, source: str = "Paper"
) -> str:
    """A titled section: the published `claim`, what this model shows (`ours`, HTML),
    then the figures and tables."""
    return (
        f"<h2>{html.escape(title)}</h2><div class='claim'><b>{html.escape(source)}:</b> "
        f"{claim}</div><div class='ours'><b>This model:</b> {ours}</div>"
        + "".join(parts)
    )


def write_page(path: pathlib.Path, title: str, body: list[str]) -> pathlib.Path:
    """Writes one HTML page atomically (a temporary file renamed over `path`)."""
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style>"
    page = (
        f"<!doctype html><html><head>{head}</head><body>{''.join(body)}</body></html>"
    )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page)
    tmp.replace(path)
    return path
