"""Write .dvc/plots.html: the page `dvc plots show` fills, with vega, vega-lite and vega-embed inlined from
their npm packages, so the plots draw with no network (DVC's own page loads the three from a CDN).
.dvc/config names it (`plots.html_template`); the page is committed, so this runs only to change versions:

    python scripts/plots_template.py      # needs npm and its registry
"""

import subprocess
import tempfile
from pathlib import Path

PACKAGES = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}  # vega-lite 5: DVC's templates' schema
OUT = Path(__file__).resolve().parents[1] / ".dvc" / "plots.html"
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>gptpipe: DVC plots</title>
    <!-- {names}, inlined from npm by scripts/plots_template.py; BSD-3-Clause, (c) the Vega project -->
{scripts}
    <style>table {{ border-spacing: 15px; }}</style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", tmp,
                        *(f"{name}@{version}" for name, version in PACKAGES.items())], check=True)
        scripts = "\n".join(
            "    <script>" + (Path(tmp) / "node_modules" / name / "build" / f"{name}.min.js").read_text()
            .replace("</script", "<\\/script") + "</script>" for name in PACKAGES)
    names = ", ".join(f"{name} {version}" for name, version in PACKAGES.items())
    OUT.write_text(PAGE.format(names=names, scripts=scripts))
    print(f"{OUT}: {OUT.stat().st_size / 1e6:.2f} MB ({names})")


if __name__ == "__main__":
    main()
