# `make demo` and `make test` work on a fresh clone: both create .venv when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow docs bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,detection]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/digits_demo.py

test: $(STAMP)
	$(PY) -m pytest -q

# the full torchvision zoo, the timm subset and the detectors (minutes; CI runs it after the default suite)
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# the documentation site, built strictly: a broken link or API reference fails (needs the test extras: the
# inspector pictures are drawn from torchvision and transformers models)
$(VENV)/.docs-installed: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[docs]'
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) build dist site *.egg-info
