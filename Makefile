# Two entry points, each of which sets everything up from a clean clone (only Python 3.11 needed):
#   make demo   generate an image from a prompt with the shipped checkpoint
#   make test   lint, run the unit tests, then every notebook under nbval
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PROMPT ?= two red circles

.PHONY: demo test unit fast lint notebooks setup browser clean peers

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

setup: $(BIN)/.installed

# out.png is this target's own output, redrawn on every `make demo`: replacing it is what was asked for.
demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/minimuse generate "$(PROMPT)" --out out.png --overwrite

# The browser test (tests/browser) drives JupyterLab in Debian's chromium; as root we install it, elsewhere it skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    { apt-get install -y -qq chromium || { apt-get update -qq && apt-get install -y -qq chromium; }; } >/dev/null 2>&1 \
	      || echo "could not install chromium: the browser test will skip"; \
	  else echo "chromium is not installed and this is not root: the browser test will skip"; fi; }

unit: setup browser
	HF_HUB_OFFLINE=1 TQDM_DISABLE=1 $(BIN)/python -m pytest -q -rs tests

# The fast tier, for the edit-test loop: everything but fault injection, several processes, compilation, the shipped
# models, docs scripts and the browser (the tests marked slow). `make test` runs both tiers.
fast: setup
	HF_HUB_OFFLINE=1 TQDM_DISABLE=1 $(BIN)/python -m pytest -q -rs -m "not slow" tests

# The rule set is in pyproject.toml ([tool.ruff.lint]): real bugs, not style.
lint: setup
	$(BIN)/ruff check .

# Notebooks run one at a time with the seconds-long `ci` preset; stored outputs come from `laptop`.
notebooks: setup
	MINIMUSE_PRESET=ci HF_HUB_OFFLINE=1 TQDM_DISABLE=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q \
	  --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=600 \
	  -p no:cacheprovider notebooks

test: lint unit notebooks

clean:
	rm -rf $(VENV) *.egg-info

# Not part of `make test`: the side-by-side timing of minimuse against muse-maskgit-pytorch and diffusers' aMUSEd,
# whose packages go into their own virtualenv. Run it on an idle machine.
PEERS := benchmarks/.venv
$(PEERS)/.installed: benchmarks/requirements-peers.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install -q --upgrade pip
	$(PEERS)/bin/pip install -q -c constraints.txt -e . -r benchmarks/requirements-peers.txt
	touch $@

peers: $(PEERS)/.installed
	$(PEERS)/bin/python benchmarks/peers.py --precision both
