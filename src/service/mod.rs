//! The D-Bus adapter: org.opdbus.NumaCache interfaces over the engine.
