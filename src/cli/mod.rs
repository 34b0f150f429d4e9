//! What `numacachectl` renders or runs without a daemon.
