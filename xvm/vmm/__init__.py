"""One domain's VMM: its control protocol (:mod:`.protocol`) and the actions it carries
(:mod:`.actions`)."""
