# Two entry points for a fresh machine: `make demo` and `make test` (README).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench wheelhouse clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found; install Python 3.11 or run 'make PY=/path/to/python3.11'"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/moss-demo

test: $(STAMP)
	OMP_NUM_THREADS=1 SDL_VIDEODRIVER=dummy SDL_AUDIODRIVER=dummy $(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check moss_vla robot tasks rig tests benchmarks

bench: $(STAMP)
	for b in benchmarks/*_bench.py; do $(BIN)/python $$b || exit 1; done

# The wheels of our stack except PyTorch (torch, torchvision, torchaudio, triton, nvidia-*: use the GPU
# node's own), pinned to this venv's versions, plus moss-vla itself, for an air-gapped node:
#   pip install --no-index --find-links wheelhouse -r wheelhouse/requirements.txt wheelhouse/moss_vla-*.whl
# WHEELHOUSE_ONLY="peft safetensors" limits it to those packages (to check the command quickly).
WHEELHOUSE_ONLY ?=
wheelhouse: $(STAMP)
	mkdir -p wheelhouse
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -i -E '^(torch|torchvision|torchaudio|triton|nvidia-[a-z0-9-]*|moss-vla)==' \
		| { if [ -n "$(WHEELHOUSE_ONLY)" ]; then grep -i -E "^($$(echo $(WHEELHOUSE_ONLY) | tr ' ' '|'))=="; else cat; fi; } \
		> wheelhouse/requirements.txt
	$(BIN)/python -m pip download --no-deps --only-binary=:all: -d wheelhouse -r wheelhouse/requirements.txt \
		|| $(BIN)/python -m pip download --no-deps -d wheelhouse -r wheelhouse/requirements.txt
	$(BIN)/python -m pip wheel --no-deps -w wheelhouse .
	@echo "wheelhouse/: $$(ls wheelhouse/*.whl | wc -l) wheels; install offline with pip install --no-index --find-links wheelhouse ..."

clean:
	rm -rf $(VENV) .pytest_cache
