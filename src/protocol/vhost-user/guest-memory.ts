// Guest memory as the pure vhost-user code sees it. The server maps the
// regions the front end shares (server/vhost-user/); the split virtqueue
// and the virtio-blk model only ever ask for views of guest-physical
// ranges through this interface, so they can be tested over plain
// Buffers and never touch an address that no region covers.

export interface GuestMemory {
  /**
   * Views of guest-physical [gpa, gpa + length), in order, split wherever
   * the mapping behind them is split (region or window boundaries); null
   * when any byte of the range lies outside every region, or gpa + length
   * overflows. A view is live guest memory: writes to it reach the guest.
   * A length of 0 yields [].
   */
  map(gpa: number, length: number): Buffer[] | null;
}
