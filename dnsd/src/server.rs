//! The UDP and TCP listeners. (To come.)
