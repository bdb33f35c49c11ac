package netguard

import "net/netip"

// SetOnConnect makes d call f with every address its socket Control hook let through, just before connecting.
func SetOnConnect(d *Dialer, f func(netip.AddrPort)) { d.onConnect = f }
