//! The forwarder's cache. (To come.)
