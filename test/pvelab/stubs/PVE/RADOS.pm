package PVE::RADOS;

# gpupass PVE lab stub (test/pvelab/stubs): XS module from proxmox/librados2-perl (Ceph), not in Debian. Loaded by PVE::Storage::RBDPlugin; only Ceph storages call it.
# Loading it works; calling ANY function or method dies, naming this stub, so a code path
# the lab cannot really run never passes silently.

use strict;
use warnings;

our $AUTOLOAD;

sub import { }
sub unimport { }

sub AUTOLOAD {
    my $name = $AUTOLOAD;
    return if $name =~ /::DESTROY$/;
    die "gpupass pvelab stub: $name called, but PVE::RADOS is not available in the lab"
        . " (test/pvelab/stubs/PVE/RADOS.pm)\n";
}

1;
