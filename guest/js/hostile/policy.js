// A misbehaving JavaScript policy, for the host's tests: the setting `mode`
// chooses the misbehaviour in `on-hit` (`loop`: spin forever; `alloc`:
// allocate without bound); otherwise it stores everything at zstd level 1.

import * as cc from "../capcache-policy.js";

let mode = "";

export const policy = {
  configure(settings) {
    for (const s of settings) {
      if (s.key !== "mode") throw cc.unknown(s);
      mode = s.value;
    }
  },
  admit(candidate) {
    return { tag: "store", val: { tag: "zstd", val: 1 } };
  },
  onHit(entry) {
    if (mode === "loop") {
      let n = 0;
      for (;;) n += 1;
    }
    if (mode === "alloc") {
      const hoard = [];
      for (;;) hoard.push(new Uint8Array(1 << 20));
    }
    return [];
  },
  onInsert(entry) {
    return [];
  },
  maintain() {
    return new cc.Report().finish();
  },
};
