#include "jointoken.h"
