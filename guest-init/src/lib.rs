//! cocoon-init: PID 1 of the cocoon guest (being written).
