//! twill-dnsd's configuration. (To come.)
