//! `numacachectl diagnose`: a check, needing no daemon, that placement works on this host.
