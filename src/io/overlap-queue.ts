// Keeps overlapping requests in arrival order while letting everything
// else run concurrently. The gateway orders client requests with it; the
// direct-I/O layer serializes its read-modify-write cycles with it. A request that changes data (exclusive) waits for
// every earlier request whose range overlaps it; a read waits only for
// earlier overlapping writes. Requests that do not overlap never wait.
// The active list is short (bounded by requests in flight), so a linear
// scan beats any interval tree here.

export interface Ticket {
  readonly start: number;
  readonly end: number;
  readonly exclusive: boolean;
  blockers: number;
  dependents: Ticket[];
  wake: (() => void) | null;
}

function newTicket(offset: number, length: number, exclusive: boolean): Ticket {
  return { start: offset, end: offset + length, exclusive, blockers: 0, dependents: [], wake: null };
}

/** Whether two requests must not run at once: they overlap and one of them changes data. */
function conflict(a: Ticket, b: Ticket): boolean {
  return (a.exclusive || b.exclusive) && a.start < b.end && b.start < a.end;
}

export class OverlapQueue {
  private active: Ticket[] = [];

  /**
   * Takes a ticket for [offset, offset + length). Returns the ticket when it
   * may proceed at once, or a promise of it when it must wait.
   */
  acquire(offset: number, length: number, exclusive: boolean): Ticket | Promise<Ticket> {
    const ticket = newTicket(offset, length, exclusive);
    for (const other of this.active) {
      if (conflict(other, ticket)) {
        other.dependents.push(ticket);
        ticket.blockers++;
      }
    }
    this.active.push(ticket);
    if (ticket.blockers === 0) return ticket;
    return new Promise((resolve) => {
      ticket.wake = () => resolve(ticket);
    });
  }

  /** A ticket for [offset, offset + length) when nothing is in its way; null (and nothing taken) when it would wait. */
  tryAcquire(offset: number, length: number, exclusive: boolean): Ticket | null {
    const ticket = newTicket(offset, length, exclusive);
    if (this.active.some((other) => conflict(other, ticket))) return null;
    this.active.push(ticket);
    return ticket;
  }

  release(ticket: Ticket): void {
    const i = this.active.indexOf(ticket);
    if (i < 0) return;
    this.active.splice(i, 1);
    for (const d of ticket.dependents) {
      if (--d.blockers === 0 && d.wake) d.wake();
    }
  }
}
