package PVE::RS::TFA;

# gpupass PVE lab stub (test/pvelab/stubs): built from Rust (proxmox-perl-rs), which cannot be built offline here. Loaded by PVE::AccessControl.
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
    die "gpupass pvelab stub: $name called, but PVE::RS::TFA is not available in the lab"
        . " (test/pvelab/stubs/PVE/RS/TFA.pm)\n";
}

1;
