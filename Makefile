# Two commands on a fresh clone: `make demo` and `make test`. Each makes .venv,
# installs torch (TORCH_SPEC; the CPU build by default) and sdlab, then runs.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.sdlab-installed

.PHONY: demo test lint clean chromium screenshots train

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test]"
	@$(MAKE) --no-print-directory chromium
	touch $(STAMP)

# The browser tests drive Debian's Chromium (never a downloaded one); as root, install it
# when it is missing. Without it those tests skip with a line saying how to install it.
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium) \
		|| echo "chromium not installed: the browser tests will skip"; fi

# The README's pictures of the web app, taken in Chromium by the browser tests' own code.
screenshots: $(STAMP)
	$(BIN)/python scripts/web_screenshots.py --out docs

demo: $(STAMP)
	$(BIN)/sdlab demo --out out

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts training

# Retrain the bundled model into runs/tiny/model (training/, not part of the package).
train: $(STAMP)
	$(BIN)/python -m training --out runs/tiny/model --workdir runs/tiny

clean:
	rm -rf $(VENV) out
