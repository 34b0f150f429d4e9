//! `numacachectl topology`: the readable table and the JSON of a topology.
