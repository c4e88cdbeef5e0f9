"""PyX / PyX-R input pipeline: records -> examples -> packed or padded batches for the train step.

Modules: ``records`` (schema, validation) · ``prompts`` (the release's templates) · ``tokenizer`` ·
``examples`` (masking) · ``packing`` · ``pipeline`` (tf.data, hosts, resume) · ``tfds_pyx`` (TFDS
builder) · ``sample`` (embedded sample data, its generator and tokenizer) · ``cli``.
"""
