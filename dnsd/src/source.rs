//! The cluster zone kept current from etcd. (To come.)
