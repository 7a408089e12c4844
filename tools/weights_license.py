"""The licence statement every shipped model card carries (tools/ship_model.py, tools/ship_robust.py)."""

WEIGHTS_LICENSE = {
    "spdx": "MIT",
    "file": "LICENSE",
    "statement": "These network weights were trained by the innerear project on its own synthetic phantoms only "
                 "(innerear.data.phantom), from randomly initialised networks: no real scan, no third-party data "
                 "set and no third-party weights went into them. They are released under the project's MIT licence "
                 "(LICENSE at the repository root; copyright the innerear contributors), like the code.",
}
