// The squad policy and model protocols live here.
