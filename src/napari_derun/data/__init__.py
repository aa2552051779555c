"""Arrays in, arrays out: reading and writing images (:mod:`.io`), validation and the mapping to [0, 1]
(:mod:`.preprocess`), training pairs (:mod:`.datasets`), degradations (:mod:`.degrade`) and the built-in
samples (:mod:`.sample_data`)."""
