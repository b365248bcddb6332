package PVE::API2::Qemu;

# gpupass PVE lab stub (test/pvelab/stubs): from proxmox/qemu-server (virtual machines), which the lab does not install. Required at load time by PVE::HA::Resources::PVEVM and PVE::Firewall; the lab has no VMs, so nothing calls it.
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
    die "gpupass pvelab stub: $name called, but PVE::API2::Qemu is not available in the lab"
        . " (test/pvelab/stubs/PVE/API2/Qemu.pm)\n";
}

1;
