"""semcoder-jax: train, convert and evaluate SemCoder-style code LLMs in JAX.

Importing the package sets the gs:// defaults of ``semcoder_jax.locations`` before anything resolves a path:
etils' epath decides once per process whether gs:// goes to TensorFlow's GCS client or to gcsfs.
"""

from semcoder_jax import locations as _locations

_locations.configure_environment()
