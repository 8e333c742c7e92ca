/* No programs: compiling this opens (or creates) the lab's pinned maps, so the
 * agent and tools get BCC table objects for them without loading any program. */
#include "lib/maps.h"
